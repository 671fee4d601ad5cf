"""A config's validation errors as the lines a person reads: where (the file or ``--set``), which key, what is
wrong and what is allowed, one line per key."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError


def _key_path(root: type[BaseModel], loc: tuple[Any, ...], extra: bool) -> tuple[str, str]:
    """Walks pydantic's error location along the config's fields: (dotted key, allowed keys there)."""
    model: Any = root
    parts: list[str] = []
    for i, part in enumerate(loc):
        fields = getattr(model, "model_fields", None) or {}
        if isinstance(part, str) and part in fields:
            parts.append(part)
            model = fields[part].annotation
        elif isinstance(part, int):
            parts.append(str(part))
        elif extra and i == len(loc) - 1:
            return ".".join(parts + [str(part)]), ", ".join(fields)
        else:
            break
    return ".".join(parts) or "(top level)", ""


REMOVED_KEYS = {
    "evaluate.split": "training evaluates its test split; evaluate another with `medtl evaluate --split NAME`",
}
"""Keys earlier versions read, with what to do instead: a config that still sets one is told so."""


WORDS_FOR = {"learning_rate": "lr", "num_epochs": "epochs", "max_epochs": "epochs", "n_epochs": "epochs",
             "backbone_name": "backbone", "arch": "backbone", "architecture": "backbone"}
"""What other training tools call a key medtl names otherwise, where spelling alone cannot tell."""


def describe_errors(err: ValidationError, root: type[BaseModel], source: str,
                    overridden: set[str] | None = None) -> list[str]:
    """One line per problem in validating ``root``: source (the file, or ``--set`` for a key given there), dotted
    key path, what is wrong, what is allowed."""
    lines: list[str] = []
    # pydantic reports one error per union member: one line per key, its alternatives joined
    union: dict[str, list[tuple[str, str]]] = {}
    for e in err.errors():
        extra = e["type"] == "extra_forbidden"
        key, allowed = _key_path(root, tuple(e["loc"]), extra)
        where = "--set" if overridden and any(key == k or key.startswith(k + ".") or k.startswith(key + ".")
                                              for k in overridden) else source
        source_here = where
        if extra and key in REMOVED_KEYS:
            lines.append(f"{source_here}: {key}: no longer used; {REMOVED_KEYS[key]}")
        elif extra:
            section, _, name = key.rpartition(".")
            near = ([WORDS_FOR[name]] if WORDS_FOR.get(name) in allowed.split(", ") else
                    difflib.get_close_matches(name, allowed.split(", "), n=1, cutoff=0.75))
            meant = f"did you mean {section + '.' if section else ''}{near[0]}? " if near else ""
            lines.append(f"{source_here}: {key}: unknown key; {meant}allowed keys here: {allowed}")
        elif not e["loc"]:  # a rule across sections names its keys itself, which may come from both places
            where = source if not overridden else "--set" if source == "defaults" else f"{source} with --set"
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        else:
            head = f"{source_here}: {key}: "
            if head not in union:
                union[head] = []
                lines.append(head)
            given = e.get("input")  # a whole section (a rule across its keys) is not worth echoing
            got = "" if isinstance(given, dict) else f" (got {given!r})"
            if e["type"] == "list_type" and isinstance(given, str) and "," in given:
                got += f"; write a list in brackets: [{', '.join(v.strip() for v in given.split(','))}]"
            union[head].append((e["msg"].removeprefix("Value error, "), got))
    return [_alternatives(line, union[line]) if line in union else line for line in lines]


def _alternatives(head: str, problems: list[tuple[str, str]]) -> str:
    """``key: msg (got x), or msg2 (got x)`` as ``key: msg, or msg2 (got x)``."""
    problems = list(dict.fromkeys(problems))
    if len({got for _, got in problems}) == 1:
        return head + ", or ".join(msg for msg, _ in problems) + problems[0][1]
    return head + ", or ".join(msg + got for msg, got in problems)

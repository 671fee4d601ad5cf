"""What `medtl manifest check` and `manifest split` print: problems by kind, cases per class and split."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from medtl.data.check import OTHER_VIEW, Geometry, Problem, class_counts, view_counts
from medtl.data.manifest import Manifest
from medtl.data.shortcuts import shortcuts
from medtl.log import wide_console


def print_check(manifest: Manifest, problems: list[Problem], seen: dict[str, Geometry] | None = None,
                sites: list[str] | None = None, deep: bool = True) -> list[Problem]:
    """One table per kind of problem (case id and detail), then class counts per split, the films' views and what
    the label goes with beside the finding (``shortcuts``); returns the problems that would stop training (not the
    films data.views leaves out). ``deep``: every voxel was read, not the headers alone."""
    out = wide_console()
    views = view_counts(seen or {})
    by_kind: dict[str, list[Problem]] = {}
    for p in problems:
        by_kind.setdefault(p.kind, []).append(p)
    left_out = {p.case_id for p in by_kind.get(OTHER_VIEW, [])}
    problems = [p for p in problems if p.case_id not in left_out]
    for kind, items in by_kind.items():
        title = (f"{kind} ({len(items)}): training leaves these films out (data.views)" if kind == OTHER_VIEW
                 else f"{kind} ({len(items)})")
        table = Table(title=title, title_justify="left")
        table.add_column("case_id")
        table.add_column("detail")
        for p in items:
            table.add_row(p.case_id, p.detail)
        out.print(table)
    print_counts(manifest.table, "split")
    cases = manifest.table["case_id"].nunique()
    if views and len(views) > 1:
        out.print("views: " + ", ".join(f"{v} {n:,}" for v, n in sorted(views.items()))
                  + ("" if left_out else "; one model takes them all unless data.views names the ones it is to take"),
                  markup=False, highlight=False)
    for line in shortcuts(manifest.table, seen or {}, sites or []):
        out.print(f"note: {line}", markup=False, highlight=False)
    if problems:
        out.print(f"[red]{len(problems)} problem(s) in {len({p.case_id for p in problems})} of {cases} cases[/]")
    else:
        out.print(f"[green]{manifest.path.name}: {cases} cases, no problem found[/]"
                  + ("" if deep else " in the headers; --deep also reads every voxel (NaN/Inf, decoding)"))
    from medtl.data.splits import OWN_PATIENTS, own_patients

    if own_patients(manifest.table):
        out.print(OWN_PATIENTS, markup=False, highlight=False)
    if not manifest.has_labels:  # fine to score; to train, its findings' columns say what to do
        from medtl.data.findings import findings_hint

        hint = findings_hint(manifest.table, manifest.path)
        if hint:
            out.print(f"no label column, so nothing to train on as it is{hint}", markup=False, highlight=False)
    return problems


def print_counts(table: pd.DataFrame, by: str) -> None:
    counts = class_counts(table.assign(split=table[by].astype(str)) if by in table else table)
    if counts.empty:
        return
    title = "cases per class and " + by
    t = Table(title=title, title_justify="left", min_width=len(title))  # a narrow table would wrap its title
    t.add_column("label")
    for col in counts.columns:
        t.add_column(str(col), justify="right")
    for label, row in counts.iterrows():
        t.add_row(str(label), *[str(int(v)) for v in row])
    wide_console().print(t)

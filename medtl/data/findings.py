"""Label sheets with several findings per case: joined in one label (ChestX-ray14's ``Effusion|Infiltration``), or
a column per finding (CheXpert's 1, 0, -1 for uncertain, blank for not mentioned). medtl trains one finding per
model; read as they are, each combination of findings would train as a class of its own. Such a sheet is named in
``manifest check`` and refused by training, and ``medtl manifest finding`` writes the manifest of one finding,
present or absent, that a model of it trains on."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd

from medtl.config_sections import Uncertain
from medtl.data.manifest import KNOWN_COLUMNS, Manifest, label_column_problem, read_manifest, rebased
from medtl.errors import ManifestError
from medtl.files import write_table

JOINED = re.compile(r"\s*[|;]\s*")
"""How sheets join findings in one cell: ChestX-ray14's ``|``, or ``;``."""


def unfit_labels(labels: pd.Series, path: Path) -> str | None:
    """Why a label column holds no set of classes, or None: several findings per case, CheXpert's uncertain -1, or
    free text. Each would train classes nobody meant."""
    return joined_labels_problem(labels, path) or uncertain_labels_problem(labels) or label_column_problem(labels)


def findings_of(label: str) -> list[str]:
    return [part for part in JOINED.split(label.strip()) if part]


def joined_labels_problem(labels: pd.Series, path: Path) -> str | None:
    """Why the label column holds several findings per case, or None: two or more labels join findings, and a
    finding recurs across labels (``Effusion|Infiltration`` beside ``Effusion`` or ``Effusion|Mass``)."""
    values = labels.dropna().astype(str)
    joined = values[values.map(lambda v: len(findings_of(v)) > 1)]
    if joined.nunique() < 2:
        return None
    labels_with = pd.Series([p for v in values.unique() for p in set(findings_of(v))]).value_counts()
    if labels_with.max() < 2:
        return None
    finding = str(labels_with.index[0])
    return (f"{len(joined)} cases' labels join several findings ({joined.value_counts().index[0]!r}), and each "
            f"combination would train as a class of its own; medtl trains one finding per model: `medtl manifest "
            f"finding {path} {shlex.quote(finding)} --out {path.with_name(slug(finding) + '.csv')}` writes that "
            "finding's manifest (present or absent); if these are class names, set data.classes")


def slug(finding: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", finding).strip("_").lower() or "finding"


def uncertain_labels_problem(labels: pd.Series) -> str | None:
    """Why a 1/0 label column also holds -1, CheXpert's mark for a finding its report was uncertain about, or
    None: read as it is, "uncertain" trains as a third class."""
    values = labels.dropna().astype(str).str.strip()
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any() or not {-1.0, 0.0, 1.0} <= set(numbers):
        return None
    if not set(numbers) <= {-1.0, 0.0, 1.0}:
        return None
    return (f"{int((numbers == -1).sum())} cases labelled -1 beside 0 and 1, as CheXpert marks a finding its report "
            "was uncertain about, and -1 would train as a third class: relabel them 1 or 0 (the U-Ones or U-Zeros "
            "policy) or remove their rows; if -1 is a class, set data.classes")


def present_absent(finding: str) -> list[str]:
    """The classes of a one-finding manifest, in label order: sorted, so the finding is the positive class."""
    return [f"{finding}_absent", f"{finding}_present"]


def finding_columns(table: pd.DataFrame) -> list[str]:
    """The columns that hold one finding each, as CheXpert's sheets do: every value 1, 0 or -1 (any decimals), or
    blank, and some 1."""
    def holds_finding(column: pd.Series) -> bool:
        numbers = pd.to_numeric(column.dropna().astype(str).str.strip(), errors="coerce")
        return len(numbers) > 0 and numbers.notna().all() and set(numbers) <= {-1.0, 0.0, 1.0} and 1.0 in set(numbers)

    return [str(c) for c in table.columns if c not in KNOWN_COLUMNS and holds_finding(table[c])]


def finding_counts(table: pd.DataFrame) -> str:
    """"findings present (uncertain): Cardiomegaly 10 (8), ..." for a table with a column per finding, or ""."""
    columns = finding_columns(table)
    numbers = {c: pd.to_numeric(table[c], errors="coerce") for c in columns}
    return "findings present (uncertain): " + ", ".join(
        f"{c} {int((n == 1).sum()):,} ({int((n == -1).sum()):,})" for c, n in numbers.items()) if columns else ""


def findings_hint(table: pd.DataFrame, manifest: Path) -> str:
    """Where ``table`` has columns of findings: "; ..." naming them and the command that writes one's manifest."""
    columns = finding_columns(table)
    if not columns:
        return ""
    return (f"; {', '.join(columns[:4])}{' …' if len(columns) > 4 else ''} hold findings (1, 0, -1 or blank): "
            f"`medtl manifest finding {shlex.quote(str(manifest))} {shlex.quote(columns[0])} --out "
            f"{shlex.quote(str(manifest.with_name(slug(columns[0]) + '.csv')))}` writes the manifest of one")


def one_finding(manifest: Manifest, finding: str, folder: Path, uncertain: Uncertain | None = None) -> pd.DataFrame:
    """The manifest's table for a manifest in ``folder`` whose label says whether each case has ``finding``: from
    its column of its own, or from the findings the labels join; an unlabelled case stays unlabelled."""
    if finding in manifest.table.columns and finding not in KNOWN_COLUMNS:
        return _from_column(manifest, finding, folder, uncertain)
    labels = manifest.table["label"] if manifest.has_labels else pd.Series(dtype=object)
    seen = {p for v in labels.dropna().astype(str) for p in findings_of(v)}
    if finding not in seen:
        columns = finding_columns(manifest.table)
        near = [p for p in sorted(seen) + columns if p.casefold() == finding.casefold()]
        hint = f"write {near[0]!r}" if near else f"its findings: {', '.join((sorted(seen) + columns)[:12]) or 'none'}"
        raise ManifestError(f"{finding!r} is not a finding of {manifest.path.name}, in its labels or a column of its "
                            f"own ({hint})")
    absent, present = present_absent(finding)
    table = _without_placeholders(rebased(manifest, folder))
    table["label"] = [None if pd.isna(v) else present if finding in findings_of(str(v)) else absent for v in labels]
    return table


def _without_placeholders(table: pd.DataFrame) -> pd.DataFrame:
    if table["split"].isna().all():  # read_manifest's placeholder for a sheet without splits
        table = table.drop(columns=["split"])
    return table


def _from_column(manifest: Manifest, finding: str, folder: Path, uncertain: Uncertain | None) -> pd.DataFrame:
    """A finding's own column: 1 present, 0 or blank absent (a report that does not mention a finding, as CheXpert's
    authors read it), -1 as ``uncertain`` says."""
    values = manifest.table[finding].map(lambda v: None if pd.isna(v) else str(v).strip())
    numbers = pd.to_numeric(values, errors="coerce")
    odd = values.notna() & ~numbers.isin([-1.0, 0.0, 1.0])
    if odd.any():
        raise ManifestError(f"case {manifest.table['case_id'][odd].iloc[0]}: {finding} is {values[odd].iloc[0]!r}; a "
                            "finding's column holds 1 (present), 0 (absent), -1 (uncertain) or nothing (not mentioned)")
    if not (numbers == 1).any():
        raise ManifestError(f"{finding}: no case marks it 1 (present), so a model of it has nothing to learn; choose "
                            f"another finding ({', '.join(finding_columns(manifest.table)[:12]) or 'none'})")
    if (numbers == -1).any() and uncertain is None:
        raise ManifestError(f"{int((numbers == -1).sum())} cases mark {finding} -1 (uncertain); say what they are: "
                            "--uncertain present (U-Ones), --uncertain absent (U-Zeros) or --uncertain drop (no row)")
    absent, present = present_absent(finding)
    table = _without_placeholders(rebased(manifest, folder))
    table["label"] = [present if n == 1 or (n == -1 and uncertain == "present") else absent for n in numbers]
    return table[~((numbers == -1) & (uncertain == "drop")).to_numpy()].reset_index(drop=True)


def write_one_finding(path: Path, finding: str, out: Path, uncertain: Uncertain | None = None) -> pd.DataFrame:
    """``medtl manifest finding``: the one-finding manifest written whole at ``out``; the input is kept."""
    if Path(out).resolve() == Path(path).resolve():
        raise ManifestError(f"--out {out}: that is the manifest the finding is taken from; write it to a new file "
                            f"(e.g. {Path(out).with_name(slug(finding) + '.csv')}), so the sheet of every finding is kept")
    table = one_finding(read_manifest(path), finding, out.parent, uncertain)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(table, out)
    return table

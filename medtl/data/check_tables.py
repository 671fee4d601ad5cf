"""What `medtl manifest check` and `manifest split` print: problems by kind, cases per class and split."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from medtl.data.check import Problem, class_counts
from medtl.data.manifest import Manifest
from medtl.log import wide_console


def print_check(manifest: Manifest, problems: list[Problem]) -> None:
    """One table per kind of problem (case id and detail), then class counts per split."""
    out = wide_console()
    by_kind: dict[str, list[Problem]] = {}
    for p in problems:
        by_kind.setdefault(p.kind, []).append(p)
    for kind, items in by_kind.items():
        table = Table(title=f"{kind} ({len(items)})", title_justify="left")
        table.add_column("case_id")
        table.add_column("detail")
        for p in items:
            table.add_row(p.case_id, p.detail)
        out.print(table)
    print_counts(manifest.table, "split")
    cases = manifest.table["case_id"].nunique()
    if problems:
        out.print(f"[red]{len(problems)} problem(s) in {len({p.case_id for p in problems})} of {cases} cases[/]")
    else:
        out.print(f"[green]{manifest.path.name}: {cases} cases, no problem found[/]")
    from medtl.data.splits import OWN_PATIENTS, own_patients

    if own_patients(manifest.table):
        out.print(OWN_PATIENTS, markup=False, highlight=False)
    if not manifest.has_labels:  # fine to score; to train, its findings' columns say what to do
        from medtl.data.findings import findings_hint

        hint = findings_hint(manifest.table, manifest.path)
        if hint:
            out.print(f"no label column, so nothing to train on as it is{hint}", markup=False, highlight=False)


def print_counts(table: pd.DataFrame, by: str) -> None:
    counts = class_counts(table.assign(split=table[by].astype(str)) if by in table else table)
    if counts.empty:
        return
    t = Table(title="cases per class and " + by, title_justify="left")
    t.add_column("label")
    for col in counts.columns:
        t.add_column(str(col), justify="right")
    for label, row in counts.iterrows():
        t.add_row(str(label), *[str(int(v)) for v in row])
    wide_console().print(t)

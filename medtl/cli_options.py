"""Arguments and options that several ``medtl`` commands share, typed once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional, get_args

import typer

from medtl.config_sections import CaseIds, Device, Uncertain, a_prevalence

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config value: --set train.lr=0.001 (repeatable)."),
]
ConfigArg = Annotated[Path, typer.Argument(help="YAML config file.")]
OptionalConfigArg = Annotated[Optional[Path], typer.Argument(help="YAML config file (defaults plus --set values when omitted).")]
ModelOption = Annotated[str, typer.Option("--model", help="A model.pt, a run folder, runs:/RUN/model or models:/NAME@ALIAS.")]
SplitsOption = Annotated[Optional[Path], typer.Option(
    "--splits", help="The training run's splits.csv, for a manifest without a split column.")]


def _one_of(choices: Any) -> Callable[[str], str]:
    """A callback that accepts only the values of a Literal, and names them when refusing."""
    values = get_args(choices)

    def check(value: str) -> str:
        if value not in values:
            raise typer.BadParameter(f"{value!r}: use {', '.join(values[:-1])} or {values[-1]}")
        return value

    return check


DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.", callback=_one_of(Device))]
CaseIdsOption = Annotated[str, typer.Option(
    "--ids", callback=_one_of(CaseIds),
    help="Case ids from each scan's file or series folder (folder), or its whole path below the folder (path), "
         "for exports whose series folders repeat (PATIENT/STUDY/SE0001).")]

UncertainOption = Annotated[Optional[str], typer.Option(
    callback=lambda value: value if value is None else _one_of(Uncertain)(value),
    help="A finding's column marked -1 (uncertain): present (U-Ones), absent (U-Zeros) or drop the case.")]


def _prevalence(value: Optional[str]) -> float | str | None:
    """``em``, or the positive-class fraction in (0, 1) as a number: parsed once, said before any model loads."""
    if value is None or value == "em":
        return value
    try:
        return float(a_prevalence(float(value)))  # type: ignore[arg-type]
    except ValueError:
        raise typer.BadParameter(f"{value!r}: give the positive-class fraction, between 0 and 1, or em to estimate it "
                                 "from the cases' own scores (labels unused)") from None


PrevalenceOption = Annotated[Optional[str], typer.Option(
    callback=_prevalence, help="The site's prevalence of the positive class (a prior-shift correction after the "
                               "temperature), or em: the one the cases' own scores imply, labels unused.")]

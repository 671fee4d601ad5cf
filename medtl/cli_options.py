"""Arguments and options that several ``medtl`` commands share, typed once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional, get_args

import typer

from medtl.config import Device

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config value: --set train.lr=0.001 (repeatable)."),
]
ConfigArg = Annotated[Path, typer.Argument(help="YAML config file.")]
OptionalConfigArg = Annotated[Optional[Path], typer.Argument(help="YAML config file (defaults plus --set values when omitted).")]
ModelOption = Annotated[str, typer.Option("--model", help="A model.pt, a run folder, runs:/RUN/model or models:/NAME@ALIAS.")]
SplitsOption = Annotated[Optional[Path], typer.Option(
    "--splits", help="The training run's splits.csv, for a manifest without a split column.")]


def _device_choice(value: str) -> str:
    if value not in get_args(Device):
        raise typer.BadParameter(f"{value!r}: use {', '.join(get_args(Device)[:-1])} or {get_args(Device)[-1]}")
    return value


DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.", callback=_device_choice)]

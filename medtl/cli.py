"""The ``medtl`` command. Thin: each command parses its arguments, calls one library function, prints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from medtl import __version__
from medtl.errors import MedtlError
from medtl.log import console, setup_logging

app = typer.Typer(
    name="medtl",
    help="Transfer learning for medical imaging: data checks, fine-tuning, calibrated evaluation, MLflow, scoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Show and validate configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config value: --set train.lr=0.001 (repeatable)."),
]
ConfigArg = Annotated[Path, typer.Argument(help="YAML config file.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medtl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    setup_logging("WARNING" if quiet else None)


@config_app.command("show")
def config_show(config: ConfigArg, set_: SetOption = None) -> None:
    """Print the resolved config (file + overrides + defaults)."""
    from medtl.config import dump_config, load_config

    typer.echo(dump_config(load_config(config, set_)), nl=False)


@config_app.command("validate")
def config_validate(config: ConfigArg, set_: SetOption = None) -> None:
    """Exit 0 when the config is valid; otherwise print every problem."""
    from medtl.config import load_config

    load_config(config, set_)
    typer.echo(f"{config}: valid")


def main() -> None:
    """Entry point: MedtlError becomes one line on stderr and a non-zero exit; --debug shows the traceback."""
    debug = "--debug" in sys.argv[1:]
    try:
        app()
    except MedtlError as err:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {escape(str(err))}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the last line of defence for users
        if debug:
            raise
        console.print(
            f"[bold red]unexpected error:[/] {type(err).__name__}: {escape(str(err))} "
            "(rerun with --debug for the traceback and report it)",
            markup=True, highlight=False, soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()

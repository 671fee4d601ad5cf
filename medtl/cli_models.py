"""``medtl models``: the registered models, and moving an alias to a version that passes its gates."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from medtl.log import wide_console

models_app = typer.Typer(help="Registered models.", no_args_is_help=True)


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(help="Version to point the alias at.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. champion.")],
    force: Annotated[bool, typer.Option("--force", help="Promote although a gate fails (recorded on the version).")] = False,
) -> None:
    """Move an alias (e.g. champion) to a model version that passes the model's gates (CI, calibration)."""
    from medtl.config import TrackingConfig
    from medtl.mlflow_model import promote
    from medtl.tracking_store import require_store, resolve_uri

    uri = resolve_uri(TrackingConfig())
    require_store(uri)
    forced = promote(name, version, alias, uri, force)
    typer.echo(f"models:/{name}@{alias} -> version {version}" + (f" (forced past: {'; '.join(forced)})" if forced else ""))


@models_app.command("list")
def models_list(name: Annotated[Optional[str], typer.Argument(help="One registered model (default: all).")] = None) -> None:
    """Registered models and their versions: aliases, test AUROC with its CI, ECE, Dice, dataset digest."""
    from rich.table import Table

    from medtl.config import TrackingConfig, redact_uri
    from medtl.mlflow_model import model_versions
    from medtl.tracking_store import require_store, resolve_uri

    uri = resolve_uri(TrackingConfig())
    require_store(uri)
    table = model_versions(uri, name)
    if table.empty:
        typer.echo(f"no registered model in {redact_uri(uri)}; `medtl run diagnosis` registers one (tracking.registered_model)")
        return
    shown = Table(*table.columns, title=f"registered models in {redact_uri(uri)}")
    for row in table.itertuples(index=False):
        shown.add_row(*(str(v) for v in row))
    wide_console().print(shown)

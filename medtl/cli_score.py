"""``medtl score``: new studies through a model, on this machine, on Spark or on Ray, with what the batch says about its site."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, NoReturn, Optional

import typer

from medtl.cli_options import CaseIdsOption, DeviceOption, PrevalenceOption
from medtl.errors import MedtlError, TrackingError, on_interrupt
from medtl.log import wide_console

if TYPE_CHECKING:
    import pandas as pd

    from medtl.archive_output import ArchiveSummary
    from medtl.scoring import ScoreSummary

SCORED = "every case scored so far is kept; rerun the same command to score the rest"


def _outside_input(input_dir: Path | None, outputs: dict[str, Path | None]) -> None:
    """Masks or heat maps written inside --input would be scored as scans by a rerun."""
    for option, folder in outputs.items():
        if folder is not None and input_dir is not None and folder.resolve().is_relative_to(input_dir.resolve()):
            raise MedtlError(f"{option} {folder}: inside --input {input_dir}, where a rerun would score its images as "
                             "scans; write them to a folder outside it")


def _score_on_archive_engine(engine: str, manifest: Path | None, local_only: dict[str, object],
                             run: Callable[[Path], ArchiveSummary]) -> NoReturn:
    """``score --engine spark|ray``: the model as registered, one probability row per case, on the engine's workers;
    the options only this machine's engine honours are refused rather than silently left out."""
    if manifest is None:
        raise MedtlError(f"--engine {engine} scores a --manifest (its workers read the paths it lists)")
    unsupported = next((option for option, value in local_only.items() if value is not None), None)
    if unsupported:
        raise MedtlError(f"{unsupported}: the {engine} engine scores the model as registered, without it; score with "
                         "--engine local")
    with on_interrupt(SCORED):
        summary = run(manifest)
    typer.echo(summary.message())
    raise typer.Exit(1 if summary.errors else 0)


def score_cmd(
    model: Annotated[str, typer.Option("--model", help="models:/NAME@ALIAS, runs:/RUN/model, a model folder or a model.pt.")],
    out: Annotated[Path, typer.Option("--out", help="predictions.csv (or .parquet).")],
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Manifest of the cases to score.")] = None,
    input_dir: Annotated[Optional[Path], typer.Option("--input", help="Folder of DICOM series / NIfTI / PNG files, or one such file.")] = None,
    ids: CaseIdsOption = "folder",
    masks_out: Annotated[Optional[Path], typer.Option("--masks-out", help="Folder for predicted masks (segmentation).")] = None,
    heatmaps: Annotated[Optional[Path], typer.Option("--heatmaps", help="Folder for each case's Grad-CAM figure (2-D binary classifiers).")] = None,
    reports_out: Annotated[Optional[Path], typer.Option("--reports-out", help="Folder for a DICOM SR of each DICOM case's result, to file in PACS beside its study: a classifier's probabilities and call, or a segmentation's volume (area on a film) per class with --masks-out (medtl pacs push stores them).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Cases per batch.")] = 16,
    device: DeviceOption = "auto",
    track: Annotated[bool, typer.Option("--track/--no-track", help="Record the scoring run in MLflow (MLFLOW_TRACKING_URI, else ./mlflow.db).")] = True,
    prevalence: PrevalenceOption = None,
    engine: Annotated[str, typer.Option(help="local (this machine), spark (mlflow spark_udf) or ray (Ray Data actors); spark and ray write Parquet.")] = "local",
    spark_master: Annotated[str, typer.Option("--spark-master", help="Spark master URL (spark-submit's MASTER wins).")] = "local[*]",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray: a cluster (auto, HOST:6379 or ray://HOST:10001), or local for a Ray started here (the default where RAY_ADDRESS is unset).")] = None,
    ray_workers: Annotated[Optional[int], typer.Option("--ray-workers", min=1, help="Ray: scoring actors (default: one per GPU, else one per 4 CPU cores).")] = None,
    ray_gpus: Annotated[Optional[float], typer.Option("--ray-gpus", min=0, help="Ray: GPUs per actor (default 1 where the cluster has GPUs, else 0).")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Spark, Ray: the only folder workers may read (default: the manifest's).")] = None,
    chunk: Annotated[int, typer.Option("--chunk", "--spark-chunk", min=1, help="Spark, Ray: cases per committed chunk (a crash costs at most one).")] = 1000,
) -> None:
    """Score new studies with a registered model; reruns resume where a crash stopped."""
    local_only = {"--prevalence": prevalence, "--masks-out": masks_out, "--heatmaps": heatmaps, "--reports-out": reports_out}
    if engine == "spark":
        from medtl.spark_scoring import score_spark

        _score_on_archive_engine(engine, manifest, local_only,
                                 lambda m: score_spark(model, m, out, spark_master, data_root, chunk))
    if engine == "ray":
        from medtl.ray_scoring import score_ray

        _score_on_archive_engine(engine, manifest, local_only, lambda m: score_ray(
            model, m, out, ray_address, data_root, chunk, batch_size, ray_workers, ray_gpus))
    if engine != "local":
        raise MedtlError(f"--engine {engine}: use local, spark or ray")
    from medtl.config import TrackingConfig  # the local engine's modules (torch, MONAI): no Spark or Ray driver reads a scan
    from medtl.models.loader import load_any_model
    from medtl.scoring import check_out, input_cases, score, set_prevalence
    from medtl.steps import run_context

    _outside_input(input_dir, {"--masks-out": masks_out, "--heatmaps": heatmaps, "--reports-out": reports_out})
    check_out(out)
    bundle = load_any_model(model)
    if masks_out is not None and bundle.task != "segmentation":
        raise MedtlError(f"--masks-out: {model} is a {bundle.task} model; only segmentation models write masks")
    if isinstance(prevalence, float):
        set_prevalence(bundle, prevalence)
    cases = input_cases(manifest, input_dir, ids)
    tracking = TrackingConfig(enabled=track)  # the store MLFLOW_TRACKING_URI names (or ./mlflow.db), as `medtl models` uses
    try:
        with on_interrupt(SCORED), run_context(tracking, f"score-{bundle.spec.name}") as tracker:
            summary = score(bundle, cases, out, masks_out, batch_size, device, tracker=tracker, heatmaps=heatmaps,
                            estimate_prevalence=prevalence == "em", reports=reports_out)
    except TrackingError as err:  # the store that records the scoring run, not the model's: scoring needs it not
        raise TrackingError(f"{err}; or score without recording the run: --no-track") from None
    _say(summary, out)
    if len(summary.errors):
        _print_failures(summary.errors)
        raise typer.Exit(1)


def _say(summary: ScoreSummary, out: Path) -> None:
    """The closing lines of a local scoring: counts and speed, what the batch's scores say, the films unlike training."""
    typer.echo(f"{out}: {summary.scored} scored now, {summary.skipped_existing} already there, "
               f"{len(summary.errors)} error(s), {summary.cases_per_s:.1f} cases/s")
    if summary.batch is not None:
        typer.echo(f"{summary.batch.message(applied=summary.prevalence_applied is not None)} ({out.with_name(f'{out.stem}.scores.png')})")
    if summary.prevalence_note:
        typer.echo(summary.prevalence_note)
    if summary.unlike is not None:
        typer.echo(summary.unlike.message())


def _print_failures(errors: pd.DataFrame) -> None:
    from rich.table import Table

    table = Table(title="cases that failed", title_justify="left")
    table.add_column("case_id")
    table.add_column("error")
    for row in errors.itertuples(index=False):
        table.add_row(str(row.case_id), str(row.error))
    wide_console().print(table)

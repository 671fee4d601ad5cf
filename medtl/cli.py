"""The ``medtl`` command. Thin: each command parses its arguments, calls one library function, prints."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.markup import escape

from medtl import __version__
from medtl.cli_data import manifest_app, weights_app
from medtl.cli_models import models_app
from medtl.cli_pacs import pacs_app
from medtl.cli_options import (ConfigArg, DeviceOption, ModelOption, OptionalConfigArg, PrevalenceOption, SetOption,
                               SplitsOption)
from medtl.cli_score import SCORED, score_cmd
from medtl.errors import Interrupted, MedtlError, RunExists, Terminated, on_interrupt, said_in_one_line
from medtl.host import settle_user_and_home
from medtl.log import console, setup_logging

app = typer.Typer(
    name="medtl",
    help="Transfer learning for medical imaging: data checks, fine-tuning, calibrated evaluation, MLflow, scoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: typer's rich tables print "<bool>" after every flag
)
config_app = typer.Typer(help="Show and validate configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(manifest_app, name="manifest")
app.add_typer(weights_app, name="weights")
app.add_typer(pacs_app, name="pacs")

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
    settle_user_and_home()


@config_app.command("show")
def config_show(config: OptionalConfigArg = None, set_: SetOption = None) -> None:
    """Print the resolved config (file + overrides + defaults); with no file, the defaults to start one from."""
    from medtl.config import dump_config, load_config

    typer.echo(dump_config(load_config(config, set_)), nl=False)


@config_app.command("validate")
def config_validate(config: ConfigArg, set_: SetOption = None) -> None:
    """Exit 0 when the config is valid; otherwise print every problem."""
    from medtl.config import load_config
    from medtl.models.registry import check_stage, checked_backbone

    cfg = load_config(config, set_)
    spec = checked_backbone(cfg.model, cfg.data.spatial_dims)  # what training would refuse before reading a scan
    if cfg.transfer.strategy == "fine_tune" and cfg.transfer.freeze_until:
        check_stage(spec, cfg.transfer.freeze_until)
    typer.echo(f"{config}: valid")


RESUME = "the last completed epoch is saved; rerun the same command with --resume"


@app.command("train")
def train_cmd(
    config: OptionalConfigArg = None,
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in the same folder from its last checkpoint.")] = False,
    resume_changed: Annotated[bool, typer.Option("--resume-changed", help="Resume although the config or manifest changed (recorded).")] = False,
) -> None:
    """Fine-tune a model as configured (classification or segmentation, 2D or 3D)."""
    from medtl.config import load_config
    from medtl.steps import fit_model

    cfg = load_config(config, set_)
    with on_interrupt(RESUME):
        result = fit_model(cfg, resume="changed" if resume_changed else resume)
    typer.echo(f"model: {result.model_path}")


@app.command("evaluate")
def evaluate_cmd(
    model: ModelOption,
    manifest: Annotated[Path, typer.Option("--manifest", help="Manifest with labels (or masks).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md, metrics.json and plots.")],
    split: Annotated[str, typer.Option(help="Split to evaluate, or 'all'.")] = "test",
    splits: SplitsOption = None,
    device: DeviceOption = "auto",
    prevalence: PrevalenceOption = None,
    bootstrap: Annotated[Optional[int], typer.Option(min=0, help="Patient bootstrap resamples for the CIs (default: the model's, 1000 unless its config said otherwise).")] = None,
    figures: Annotated[Optional[bool], typer.Option("--figures/--no-figures", help="Draw the figures (ROC, reliability, Grad-CAM, overlays; PNG and SVG), as the model's settings say unless given; --no-figures writes the numbers alone, faster where many models are evaluated.")] = None,
    site_temperature: Annotated[Optional[bool], typer.Option("--site-temperature/--no-site-temperature", help="Classifiers: fit the temperature on these cases' own scans, labels unused (PseudoCal), in place of the model's validation one; for a site whose scans differ. As the model's settings say unless given.")] = None,
) -> None:
    """Evaluate a trained model: outcome and calibration metrics with CIs, subgroups, plots, report."""
    from medtl.evaluate.report import fmt
    from medtl.evaluate.run import evaluate_bundle, evaluation_config
    from medtl.models.loader import load_any_model

    bundle = load_any_model(model)
    cfg = evaluation_config(bundle, prevalence)
    given = {"bootstrap": bootstrap, "figures": figures, "site_temperature": site_temperature}
    cfg = cfg.model_copy(update={key: value for key, value in given.items() if value is not None})
    ev = evaluate_bundle(bundle, manifest, split, out, cfg, device=device, splits=splits)
    key = "auroc" if "auroc" in ev.metrics else ("auroc_macro" if "auroc_macro" in ev.metrics else "dice_mean")
    step = "_prior_adjusted" if "calibration_slope_prior_adjusted" in ev.metrics else "_calibrated"
    line = "" if f"calibration_slope{step}" not in ev.metrics else (  # how a site's risks are off, at a glance
        f"  ECE {fmt(ev.metrics, 'ece' + step)}, calibration slope {fmt(ev.metrics, 'calibration_slope' + step)}, "
        f"intercept {fmt(ev.metrics, 'calibration_intercept' + step)}")
    typer.echo(f"{key}: {fmt(ev.metrics, key)}{line}  report: {out / 'report.md'}")


@app.command("recalibrate")
def recalibrate_cmd(
    model: ModelOption,
    manifest: Annotated[Path, typer.Option("--manifest", help="A random sample of the new site's cases, labelled.")],
    out: Annotated[Path, typer.Option("--out", help="The site's model.pt (the weights as trained, the output bias moved).")],
    split: Annotated[str, typer.Option(help="Split of the manifest to use, or 'all'.")] = "all",
    splits: SplitsOption = None,
    threshold_rule: Annotated[str, typer.Option(help="youden, sensitivity or fixed.")] = "youden",
    target_sensitivity: Annotated[float, typer.Option(help="For --threshold-rule sensitivity (above 0, at most 1).")] = 0.9,
    device: DeviceOption = "auto",
) -> None:
    """Recalibrate a model for a new site on labelled cases of it: calibration slope and intercept, threshold."""
    from medtl.recalibration import recalibrate_model

    if threshold_rule not in ("youden", "sensitivity", "fixed"):
        raise MedtlError(f"--threshold-rule {threshold_rule}: use youden, sensitivity or fixed")
    if out.suffix != ".pt":
        raise MedtlError(f"--out {out}: a medtl model file ends in .pt (score and evaluate load it by that); "
                         f"give e.g. {out.with_suffix('.pt')}")
    site, (temperature, threshold) = recalibrate_model(model, manifest, out, split, threshold_rule, target_sensitivity, device,
                                                       splits)
    fit = site.extra["recalibrated_on"]
    slope = f"calibration slope {fit['slope']:.3f}, intercept {fit['intercept']:+.3f}; " if "slope" in fit else ""
    typer.echo(f"{slope}temperature {temperature:.3f} -> {site.temperature:.3f}, threshold {threshold:.4f} -> "
               f"{site.threshold:.4f}, from {fit['cases']} cases ({', '.join(f'{k} {c}' for k, c in zip(site.classes, fit['per_class']))})")
    typer.echo(f"site model: {out}  score with: medtl score --model {out} --manifest ...")


app.command("score")(score_cmd)


@app.command("synthetic")
def synthetic_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write scans and manifest.csv into.")],
    task: Annotated[str, typer.Option(help="classification or segmentation.")] = "classification",
    kind: Annotated[str, typer.Option(help="png, nifti or dicom (classification).")] = "png",
    n: Annotated[int, typer.Option(help="Number of cases.")] = 40,
    seed: Annotated[int, typer.Option(min=0, help="Seed: the same seed writes the same scans.")] = 0,
) -> None:
    """Write small synthetic scans with labels or masks and a manifest, to try medtl."""
    from medtl.data.synthetic import make_classification_set, make_segmentation_set

    if kind not in ("png", "nifti", "dicom"):
        raise MedtlError(f"--kind {kind!r}: use png, nifti or dicom")
    if n < 2:
        raise MedtlError(f"--n {n}: write at least 2 cases")
    if task == "segmentation":
        path = make_segmentation_set(out, n=n, seed=seed)
    elif task == "classification":
        path = make_classification_set(out, n=n, kind=kind, seed=seed, size=(32, 32) if kind != "nifti" else (32, 32, 16))
    else:
        raise MedtlError(f"--task {task!r}: use classification or segmentation")
    typer.echo(f"{path}: {n} cases")


@app.command("demo")
def demo_cmd(set_: SetOption = None) -> None:
    """Fine-tune ImageNet EfficientNet-Lite2 on real chest X-rays vs scratch, evaluate, register, score."""
    from medtl.demo import run_demo

    with on_interrupt("the demo does not resume; move or delete demo_out/runs and run it again"):
        run_demo(set_)


app.add_typer(models_app, name="models")


@app.command("compare")
def compare_cmd(
    a: Annotated[Path, typer.Argument(help="predictions.csv (or a segmentation's per_case.csv) of model A.")],
    b: Annotated[Path, typer.Argument(help="The same file of model B, on the same cases.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the comparison, its table and figures.")],
    names: Annotated[str, typer.Option(help="Names of A and B, comma-separated.")] = "A,B",
    bootstrap: Annotated[int, typer.Option(min=0, help="Paired bootstrap resamples (0: no intervals).")] = 1000,
    positive: Annotated[Optional[str], typer.Option(help="Models of several classes: the class compared against the rest.")] = None,
) -> None:
    """Paired comparison of two models on the same cases: ΔAUROC (CI, DeLong), ΔBrier, ΔECE, Δsensitivity and
    Δspecificity at each model's threshold (McNemar) and a decision curve; for segmentations, ΔDice, ΔIoU, ΔHD95,
    ΔASD (CIs) and Wilcoxon.

    These files hold no patient ids, so each case is resampled as its own patient here; the compare,
    label_efficiency and demo pipelines resample patients."""
    from medtl.evaluate.paired import compare_predictions, require_prediction_columns, write_comparison
    from medtl.evaluate.paired_segmentation import (compare_segmentations, per_case_numbers,
                                                    write_segmentation_comparison)
    from medtl.scoring import read_predictions

    tables = []
    for path in (a, b):
        if not path.is_file():
            raise MedtlError(f"{path}: file not found; give the predictions.csv (or per_case.csv) of an evaluation")
        tables.append(read_predictions(path))
    pair = tuple(n.strip() for n in names.split(","))
    if len(pair) != 2 or not all(pair) or pair[0] == pair[1]:
        raise MedtlError(f"--names {names!r}: give two different names, A's then B's, e.g. --names fine_tune,scratch")
    if all("dice" in t for t in tables):
        tables = [per_case_numbers(table, str(path)) for table, path in zip(tables, (a, b))]
        write_segmentation_comparison(compare_segmentations(*tables, pair, bootstrap), out)
    else:
        for table, path in zip(tables, (a, b)):
            require_prediction_columns(table, str(path))  # named by its file here, not as A or B
        write_comparison(compare_predictions(*tables, pair, bootstrap, positive=positive), out)
    typer.echo((out / "paired_comparison.md").read_text())


tracking_app = typer.Typer(help="Tracking that could not reach the server.", no_args_is_help=True)
app.add_typer(tracking_app, name="tracking")


@tracking_app.command("sync")
def tracking_sync(run_folder: Annotated[Path, typer.Argument(help="Run folder holding tracking_offline.jsonl.")]) -> None:
    """Replay what a run logged while the tracking server was unreachable into its MLflow run."""
    from medtl.tracking import sync_offline

    with on_interrupt(f"the calls sent so far are recorded; run `medtl tracking sync {run_folder}` again to send the rest"):
        replayed = sync_offline(run_folder)
    typer.echo(f"{replayed} logged call(s) replayed into the run")


@app.command("run")
def run_cmd(
    pipeline: Annotated[str, typer.Argument(help="diagnosis, segmentation, compare, crossval, label_efficiency, adaptation, batch_score, or a .py path.")],
    config: OptionalConfigArg = None,
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted training run.")] = False,
    resume_changed: Annotated[bool, typer.Option("--resume-changed", help="Resume although the config or manifest changed (recorded).")] = False,
    folds: Annotated[Optional[int], typer.Option("--folds", help="crossval: number of folds (default 5).")] = None,
) -> None:
    """Run a pipeline end to end from a config."""
    from medtl.config import load_config

    cfg = load_config(config, set_)
    from medtl.pipelines import accepts, load_pipeline

    module = load_pipeline(pipeline)
    mode = "changed" if resume_changed else resume
    if mode and not accepts(module.run, "resume"):
        raise MedtlError(f"--resume: pipeline {pipeline} cannot resume; run it again with --set name=NEW")
    kwargs: dict = {"resume": mode} if accepts(module.run, "resume") else {}
    if folds is not None:
        if not accepts(module.run, "folds"):
            raise MedtlError(f"--folds: pipeline {pipeline} does not take folds; use crossval")
        kwargs["folds"] = folds
    resumes = accepts(module.run, "resume")
    try:
        with on_interrupt(RESUME if resumes else SCORED if pipeline == "batch_score" else
                          f"{pipeline} does not resume; the models it finished stay in {cfg.train.out_dir}; run it "
                          "again with --set name=NEW"):
            out = module.run(cfg, **kwargs)
    except RunExists as err:
        if resumes:
            raise
        raise MedtlError(f"{err.out_dir} already holds a run of an earlier {pipeline}, which does not resume; add --set "
                         "name=NEW for a new one, or move that folder away") from None
    summary = out.get("summary") if isinstance(out, dict) else None
    if summary:
        typer.echo(summary)
    if isinstance(out, dict) and out.get("registered"):
        typer.echo(f"registered: {out['registered']} (version {out['version']})")
    if isinstance(out, dict):
        _say_where(out)


def _say_where(out: dict) -> None:
    """Where a training pipeline left its model and report, and the command that scores new studies with it."""
    model = getattr(out.get("result"), "model_path", None)
    if model is None or not Path(model).is_file():
        return
    here = Path.cwd()
    model = Path(model).relative_to(here) if Path(model).is_relative_to(here) else Path(model)
    report = model.parent / "evaluation_test" / "report.md"
    typer.echo(f"model: {model}" + (f"; report: {report}" if report.is_file() else ""))
    typer.echo(f"score new studies with: medtl score --model {out.get('registered') or model} --input DIR "
               "--out predictions.csv")


def main() -> None:
    """Entry point: MedtlError becomes one line on stderr and a non-zero exit; --debug shows the traceback."""
    debug = "--debug" in sys.argv[1:]
    flags = [a for a in sys.argv[1:] if a in ("--debug", "--quiet", "-q")]
    if flags:  # "rerun with --debug" is mostly typed at the end of the command; the global flags belong before it
        sys.argv = [sys.argv[0], *flags, *(a for a in sys.argv[1:] if a not in flags)]
    try:
        with _sigterm_as_interrupt():
            _run_app()
    except MedtlError as err:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {escape(str(err))}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except OSError as err:
        if debug:
            raise
        said = _file_error(err)
        if said is None:
            _unexpected(err)
        console.print(f"[bold red]error:[/] {escape(said)}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - the last line of defence for users
        if debug:
            raise
        said = said_in_one_line(err)
        if said is None:
            _unexpected(err)
        console.print(f"[bold red]error:[/] {escape(said)}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(1)


def _run_app() -> None:
    """typer's app, where a Ctrl-C or SIGTERM no command caught is said: typer exits 130 on it without a word."""
    try:
        app()
    except KeyboardInterrupt as stop:
        raise Interrupted("", stop) from None
    except SystemExit as done:
        stop = done.__context__
        while stop is not None and not isinstance(stop, KeyboardInterrupt):
            stop = stop.__cause__ or stop.__context__
        if done.code == 130 and stop is not None:
            raise Interrupted("", stop) from None
        raise


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's time limit, ``kill``) stops a command as Ctrl-C does, so its MLflow run is closed and it
    says how to go on; by default it ended the process on the spot and left the run RUNNING for ever. Under torchrun,
    whose agent stops its workers with SIGTERM, the default stays."""
    if "TORCHELASTIC_RUN_ID" in os.environ or threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _file_error(err: OSError) -> str | None:
    """What a user can do about a file the OS would not let medtl write, or None where the error is not one of those."""
    name = Path(err.filename) if err.filename else None
    if name is not None and name.name.startswith(".") and name.suffix in (".lock", ".tmp", ".writing"):
        name = name.parent  # medtl's own lock or temporary file: the folder is what the user named
    where = f"{name}: " if name is not None else ""
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        return f"{where or 'a file: '}a file is where a folder should go; choose another path"
    if isinstance(err, IsADirectoryError):
        return f"{where or 'a file: '}a folder is where a file should go; give a file name"
    if isinstance(err, PermissionError) or err.errno == errno.EROFS:
        why = "the file system is read-only" if err.errno == errno.EROFS else (err.strerror or type(err).__name__)
        return f"{where or 'a file: '}{why}; choose a path you can write, or fix its permissions"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{where}the disk is full (or its quota used up); free space where medtl writes (the run folder, --out, "
                "the MLflow store, the cache) and rerun: files written whole stay whole, and a training resumes from "
                "its last checkpoint with --resume")
    return None


def _unexpected(err: BaseException) -> NoReturn:
    console.print(f"[bold red]unexpected error:[/] {type(err).__name__}: {escape(str(err))} "
                  "(rerun with --debug for the traceback and report it)", markup=True, highlight=False, soft_wrap=True)
    sys.exit(1)

if __name__ == "__main__":
    main()

"""``medtl demo``: the whole mission on real shipped data, on a CPU, with no network.

PneumoniaMNIST films become PNG files + manifest (official splits) → ImageNet EfficientNet-Lite2 fine-tuned
with class weights, next to a scratch baseline on the same budget → temperature + threshold on validation →
test evaluation with patient-bootstrap CIs → the test films as a new site (AdaBN on a copy, labels unused) →
MLflow runs and a registered model → batch scoring of the test films with the registered model → a summary table.
"""

from __future__ import annotations

import time
from pathlib import Path

from medtl.config import Config, load_config
from medtl.data.manifest import rows_of_split
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.errors import MedtlError
from medtl.evaluate.report import Evaluation
from medtl.log import logger, wide_console
from medtl.models.loader import load_any_model
from medtl.observe import Tracker
from medtl.scoring import ScoreSummary, score
from medtl.pipelines import load_pipeline
from medtl.pipelines.label_efficiency import curve_metric
from medtl.steps import run_context, strategy_variant, summary_table
from medtl.train.run import TrainResult

PACKAGE = Path(__file__).resolve().parent
NPZ = PACKAGE / "resources" / "pneumoniamnist.npz"
CONFIG = PACKAGE / "configs" / "demo.yaml"


def run_demo(overrides: list[str] | None = None, limit_train: int | None = None) -> dict:
    """Runs the demo in ``./demo_out`` (films, runs) with the MLflow store in the working folder."""
    start = time.perf_counter()
    here = Path.cwd() / "demo_out"
    cfg: Config = load_config(CONFIG, [f"data.manifest={here / 'pneumoniamnist' / 'manifest.csv'}",
                                       f"train.out_dir={here / 'runs'}", *(overrides or [])])
    earlier = sorted(Path(cfg.train.out_dir).glob("*/checkpoints/last.pt"))
    if earlier:  # each of the demo's runs would refuse to start over a run it did not make
        raise MedtlError(f"{cfg.train.out_dir} already holds the demo's runs (e.g. {earlier[0].parents[1].name}); move or "
                         "delete that folder to run the demo again (the MLflow store keeps the earlier runs)")
    manifest = Path(cfg.data.manifest)  # type: ignore[arg-type]
    if not manifest.is_file():
        logger.info("writing PneumoniaMNIST films as PNG files with a manifest (official splits)")
        import_medmnist(NPZ, manifest.parent, PNEUMONIA_CLASSES, limit={"train": limit_train} if limit_train else None)
    diagnosis = load_pipeline("diagnosis")
    rows, registered, paired, curve = [], None, [], []
    with run_context(cfg.tracking, f"{cfg.name}-pretrained-vs-scratch") as parent:
        for share in (1.0, SCARCE):
            runs = {}
            for strategy in (cfg.transfer.strategy, "scratch"):
                variant = _demo_variant(cfg, strategy, share)
                logger.info("training %s (%s)", variant.name, "ImageNet weights" if strategy != "scratch" else "random init")
                out = diagnosis.run(variant, nested=cfg.tracking.enabled)
                n = int((out["result"].prepared.table["split"] == "train").sum())
                label = f"{strategy} ({'ImageNet' if strategy != 'scratch' else 'random init'}), {n:,} films"
                rows.append((label, out["evaluation"].metrics))
                curve.append({"strategy": strategy, "n_labelled": n, **curve_metric(out["evaluation"].metrics, "auroc")})
                runs[strategy] = out["evaluation"].predictions
                registered = registered or out.get("registered") or str(out["result"].model_path)
                if share == 1.0 and strategy == cfg.transfer.strategy:
                    site = _new_site(out["result"], parent)
                    rows.append((f"{label} + AdaBN on the unlabelled test films", site.metrics))
                    runs["adabn"] = site.predictions
            paired.append((share, _paired(cfg, runs, parent, share)))
        table = summary_table(rows)
        parent.log_table(table.to_dict(orient="records"), "comparison.json")
        _learning_curve(curve, Path(cfg.train.out_dir), parent, cfg.evaluate.figures)
    scores = _score_test(cfg, registered, manifest)
    _print(table, paired, scores, registered, time.perf_counter() - start, cfg)
    return {"table": table, "paired": paired, "registered": registered, "scores": scores}


SCARCE = 0.10
"""The label-scarce row: a tenth of the training films (nested, class-stratified), same val and test."""


def _demo_variant(cfg: Config, strategy: str, share: float) -> Config:
    if share == 1.0:
        return strategy_variant(cfg, strategy, register=strategy != "scratch")
    from medtl.data.manifest import read_manifest
    from medtl.data.splits import nested_subsets
    from medtl.pipelines.label_efficiency import study_variant, subset_manifest

    manifest = read_manifest(cfg.data.manifest)  # type: ignore[arg-type]
    train = rows_of_split(manifest.table, "train")
    cases = nested_subsets(train, [share], cfg.train.seed)[share]
    path = subset_manifest(manifest.table, cases, Path(cfg.train.out_dir) / f"train_{share:.0%}.csv")
    return study_variant(cfg, strategy, path, manifest.root, f"{share:.0%}".replace("%", "pct"))


def _new_site(result: TrainResult, parent: Tracker) -> Evaluation:
    """The test films taken as a new hospital's scans (they were collected apart from the training films):
    AdaBN on them without their labels, on a copy of the fine-tuned model (the registered one stays as
    trained); temperature and threshold stay those chosen on validation, prevalence is EM's on the adapted
    scores. Pre-registered before its test result was seen; printed next to the model as trained."""
    import copy

    from medtl.evaluate.run import evaluate_table
    from medtl.steps import adapt_norms, log_evaluation

    bundle = copy.deepcopy(result.bundle)
    test = rows_of_split(result.prepared.table, "test")
    seen = adapt_norms(bundle, test, result.summary)
    ev = evaluate_table(bundle, test, result.out_dir / "evaluation_test_adabn")
    parent.log_metrics({"adabn_test_images": float(seen)})
    log_evaluation(parent, ev, "adabn_test_", "evaluation_test_adabn")
    return ev


def _learning_curve(points: list[dict], out_dir: Path, parent: Tracker, figures: bool = True) -> list[Path]:
    """Test AUROC with its CI against the training films, one line per strategy (the demo's two sizes; the
    label-efficiency study draws the whole curve), logged to the parent run."""
    import pandas as pd

    from medtl.pipelines.label_efficiency import write_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_curve(pd.DataFrame(points), "auroc", out_dir, figures)
    for f in files:
        parent.log_artifact(f, "learning_curve")
    return files


def _paired(cfg: Config, runs: dict, parent: Tracker, share: float) -> dict[str, dict[str, float]]:
    """fine_tune vs scratch at this share and, where the demo adapted the model, AdaBN vs the model as trained."""
    from medtl.steps import paired_step

    out = {}
    for pair in [(cfg.transfer.strategy, "scratch"), *([("adabn", cfg.transfer.strategy)] if "adabn" in runs else [])]:
        name = f"paired_{share:.0%}".replace("%", "pct") + ("_adabn" if pair[0] == "adabn" else "")
        folder = Path(cfg.train.out_dir) / name
        out[pair[0]] = paired_step(parent, runs[pair[0]], runs[pair[1]], pair, folder, cfg.evaluate.bootstrap, f"{name}_").metrics
    return out


def _score_test(cfg: Config, model_ref: str, manifest: Path) -> ScoreSummary:
    import pandas as pd

    bundle = load_any_model(model_ref)
    table = pd.read_csv(manifest)
    test = rows_of_split(table, "test")
    cases = [{"case_id": r.case_id, "image": str(manifest.parent / r.image)} for r in test.itertuples()]
    out = Path(cfg.train.out_dir) / "test_scores.csv"
    out.unlink(missing_ok=True)
    with run_context(cfg.tracking, f"{cfg.name}-score-test") as tracker:
        return score(bundle, cases, out, batch_size=64, tracker=tracker)


def _print(table, paired: list, scores: ScoreSummary, registered: str, seconds: float, cfg: Config) -> None:
    from rich.table import Table

    console = wide_console()
    t = Table(title="PneumoniaMNIST test split (624 films): pretrained vs scratch, same budget", title_justify="left")
    for col in table.columns:
        t.add_column(col)
    for row in table.itertuples(index=False):
        t.add_row(*map(str, row))
    console.print(t)
    for share, pairs in paired:
        for first, m in pairs.items():
            what = "AdaBN − as trained" if first == "adabn" else f"{first} − scratch"
            console.print(f"{share:.0%} of the training films: ΔAUROC {what} {m['delta_auroc']:+.3f} "
                          f"[{m['delta_auroc_ci_low']:+.3f}, {m['delta_auroc_ci_high']:+.3f}] (paired bootstrap), "
                          f"DeLong p = {m.get('delong_p', float('nan')):.3g}")
    console.print(f"registered model: {registered}")
    console.print(f"test films scored with it: {scores.out}" + "".join(f"; {part.message()}" for part in
                                                                     (scores.batch, scores.unlike) if part is not None))
    import sys

    ui = Path(sys.executable).parent / "mlflow"  # the venv's: plain `mlflow` is not on PATH outside it
    console.print(f"finished in {seconds / 60:.1f} min. Open the dashboard with:  {ui} ui --backend-store-uri "
                  f"sqlite:///{Path.cwd() / 'mlflow.db'}  then http://127.0.0.1:5000 (experiment "
                  f"'{cfg.tracking.experiment}', view 'Model training')")

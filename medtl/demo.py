"""``medtl demo``: the whole mission on real shipped data, on a CPU, with no network.

PneumoniaMNIST films become PNG files + manifest (official splits) → ImageNet EfficientNet-Lite0 fine-tuned
with class weights, next to a scratch baseline on the same budget → temperature + threshold on validation →
test evaluation with patient-bootstrap CIs → MLflow runs and a registered model → batch scoring of the test
films with the registered model → a summary table.
"""

from __future__ import annotations

import time
from pathlib import Path

from medtl.config import Config, load_config
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.log import logger, wide_console
from medtl.scoring import load_any_model, score
from medtl.pipelines import load_pipeline
from medtl.steps import run_context, strategy_variant, summary_table

PACKAGE = Path(__file__).resolve().parent
NPZ = PACKAGE / "resources" / "pneumoniamnist.npz"
CONFIG = PACKAGE / "configs" / "demo.yaml"


def run_demo(overrides: list[str] | None = None, limit_train: int | None = None) -> dict:
    """Runs the demo in ``./demo_out`` (films, runs) with the MLflow store in the working folder."""
    start = time.perf_counter()
    here = Path.cwd() / "demo_out"
    cfg: Config = load_config(CONFIG, [f"data.manifest={here / 'pneumoniamnist' / 'manifest.csv'}",
                                       f"train.out_dir={here / 'runs'}", *(overrides or [])])
    manifest = Path(cfg.data.manifest)  # type: ignore[arg-type]
    if not manifest.is_file():
        logger.info("writing PneumoniaMNIST films as PNG files with a manifest (official splits)")
        import_medmnist(NPZ, manifest.parent, PNEUMONIA_CLASSES, limit={"train": limit_train} if limit_train else None)
    diagnosis = load_pipeline("diagnosis")
    rows, registered = [], None
    with run_context(cfg.tracking, f"{cfg.name}-pretrained-vs-scratch") as parent:
        for strategy in (cfg.transfer.strategy, "scratch"):
            variant = strategy_variant(cfg, strategy, register=strategy != "scratch")
            logger.info("training %s (%s)", variant.name, "ImageNet weights" if strategy != "scratch" else "random init")
            out = diagnosis.run(variant, nested=cfg.tracking.enabled)
            rows.append((f"{strategy} ({'ImageNet' if strategy != 'scratch' else 'random init'})", out["evaluation"].metrics))
            registered = registered or out.get("registered") or str(out["result"].model_path)
        table = summary_table(rows)
        parent.log_table(table.to_dict(orient="records"), "comparison.json")
    scores = _score_test(cfg, registered, manifest)
    _print(table, scores, registered, time.perf_counter() - start, cfg)
    return {"table": table, "registered": registered, "scores": scores}


def _score_test(cfg: Config, model_ref: str, manifest: Path) -> Path:
    import pandas as pd

    bundle = load_any_model(model_ref)
    table = pd.read_csv(manifest)
    test = table[table["split"] == "test"]
    cases = [{"case_id": r.case_id, "image": str(manifest.parent / r.image)} for r in test.itertuples()]
    out = Path(cfg.train.out_dir) / "test_scores.csv"
    out.unlink(missing_ok=True)
    with run_context(cfg.tracking, f"{cfg.name}-score-test") as tracker:
        score(bundle, cases, out, batch_size=64, tracker=tracker)
    return out


def _print(table, scores: Path, registered: str, seconds: float, cfg: Config) -> None:
    from rich.table import Table

    console = wide_console()
    t = Table(title="PneumoniaMNIST test split (624 films): pretrained vs scratch, same budget", title_justify="left")
    for col in table.columns:
        t.add_column(col)
    for row in table.itertuples(index=False):
        t.add_row(*map(str, row))
    console.print(t)
    console.print(f"registered model: {registered}")
    console.print(f"test films scored with it: {scores}")
    console.print(f"finished in {seconds / 60:.1f} min. Open the dashboard with:  mlflow ui --backend-store-uri "
                  f"sqlite:///{Path.cwd() / 'mlflow.db'}  (experiment '{cfg.tracking.experiment}')")

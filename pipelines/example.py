"""A pipeline of your own: diagnosis without registration, then a paired comparison against a baseline
model you trained before. Run it with ``medtl run pipelines/example.py CONFIG``."""

from __future__ import annotations

from medtl.config import Config
from medtl.steps import calibrate_step, evaluate_step, run_context, train_step
from medtl.train.run import run_dir


def run(cfg: Config, resume: bool = False) -> dict:
    with run_context(cfg.tracking, cfg.name, checkpoint_dir=run_dir(cfg) / "checkpoints", resume=resume) as tracker:
        result = train_step(cfg, tracker, resume)
        calibrate_step(result, tracker)
        evaluation = evaluate_step(result, tracker, "test")
    metrics = evaluation.metrics if evaluation else {}
    return {"summary": f"{cfg.name}: test AUROC {metrics.get('auroc', float('nan')):.3f}", "result": result}

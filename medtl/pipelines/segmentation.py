"""Segmentation: manifest with masks → check → split → train (Dice loss, patches) → evaluate Dice/HD95 → register."""

from __future__ import annotations

from medtl.config import Config
from medtl.pipelines import require_task
from medtl.train.run import run_dir
from medtl.steps import summary_table, evaluate_step, model_written, register_step, run_context, train_step


def run(cfg: Config, resume: bool = False, nested: bool = False) -> dict:
    require_task(cfg, "segmentation", "segmentation")
    with run_context(cfg.tracking, cfg.name, nested=nested, checkpoint_dir=run_dir(cfg) / "checkpoints",
                     resume=resume) as tracker:
        result = train_step(cfg, tracker, resume)
        with model_written(result):
            evaluation = evaluate_step(result, tracker, "test")
        registered = register_step(result, tracker, evaluation)
    summary = summary_table([(cfg.transfer.strategy, evaluation.metrics)]).to_string(index=False) if evaluation else None
    return {"result": result, "evaluation": evaluation, "summary": summary, **registered}

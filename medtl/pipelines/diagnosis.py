"""Diagnosis: manifest → check → split → train → calibrate → evaluate on test → register the model."""

from __future__ import annotations

from medtl.config import Config
from medtl.pipelines import require_task
from medtl.train.run import run_dir
from medtl.steps import summary_table, calibrate_step, evaluate_step, model_written, register_step, run_context, train_step


def run(cfg: Config, resume: bool = False, nested: bool = False) -> dict:
    require_task(cfg, "classification", "diagnosis")
    with run_context(cfg.tracking, cfg.name, nested=nested, checkpoint_dir=run_dir(cfg) / "checkpoints",
                     resume=resume) as tracker:
        result = train_step(cfg, tracker, resume)            # checks the manifest first, splits once
        with model_written(result):                           # model.pt once, after what follows
            calibrate_step(result, tracker)                   # temperature + threshold from validation
            evaluation = evaluate_step(result, tracker, "test")   # outcome + calibration with CIs, plots
        registered = register_step(result, tracker, evaluation)          # pyfunc model, registry alias
    summary = summary_table([(cfg.transfer.strategy, evaluation.metrics)]).to_string(index=False) if evaluation else None
    return {"result": result, "evaluation": evaluation, "summary": summary, **registered}

"""Domain adaptation: train on the source site with CORAL or DANN drawing target batches (or source only,
then AdaBN after the source evaluation), calibrate on source validation, and evaluate on source and target test splits
side by side."""

from __future__ import annotations

from medtl.config import Config
from medtl.train.run import run_dir
from medtl.steps import (adabn_step, calibrate_step, evaluate_step, evaluate_target_step, model_written, register_step,
                         run_context, train_step)


def run(cfg: Config, resume: bool = False, nested: bool = False) -> dict:
    with run_context(cfg.tracking, cfg.name, nested=nested, checkpoint_dir=run_dir(cfg) / "checkpoints",
                     resume=resume) as tracker:
        tracker.set_tags({"adaptation.method": cfg.adaptation.method})
        result = train_step(cfg, tracker, resume)
        with model_written(result):
            calibrate_step(result, tracker)
            source = evaluate_step(result, tracker, "test", prefix="source_test_")  # the source site's statistics
            if cfg.adaptation.method == "adabn":
                adabn_step(result, tracker)
            target = evaluate_target_step(result, tracker)
        registered = register_step(result, tracker, source)
    return {"result": result, "evaluation": source, "source": source, "target": target, **registered}

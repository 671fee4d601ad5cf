"""Compare transfer strategies on the same data: each its own MLflow run under one parent, then a table of
test AUROC / ECE side by side — what transfer learning bought you."""

from __future__ import annotations

from medtl.config import Config
from medtl.pipelines import task_pipeline
from medtl.steps import paired_step, run_context, strategy_variant, summary_table
from medtl.train.run import run_dir

STRATEGIES = ("scratch", "feature_extraction", "fine_tune", "full")


def run(cfg: Config, strategies: tuple[str, ...] = STRATEGIES) -> dict:
    diagnosis = task_pipeline(cfg)
    rows, predictions = [], {}
    with run_context(cfg.tracking, f"{cfg.name}-compare") as parent:
        for strategy in strategies:
            variant = strategy_variant(cfg, strategy, register=False)
            out = diagnosis.run(variant, nested=True)
            rows.append((strategy, out["evaluation"].metrics if out["evaluation"] else {}))
            if out["evaluation"] is not None:
                predictions[strategy] = out["evaluation"].predictions
        table = summary_table(rows)
        parent.log_table(table.to_dict(orient="records"), "comparison.json")
        summary = table.to_string(index=False)
        pair = cfg.study.compare
        if all(predictions.get(s) is not None for s in pair):
            if paired_step(parent, predictions[pair[0]], predictions[pair[1]], pair, run_dir(cfg) / "paired",
                           cfg.evaluate.bootstrap, "paired_") is not None:  # the parent's figures: always
                summary += "\n\n" + (run_dir(cfg) / "paired" / "paired_comparison.md").read_text()
    return {"table": table, "summary": summary}

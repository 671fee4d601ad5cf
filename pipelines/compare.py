"""Compare transfer strategies on the same data: each its own MLflow run under one parent, then a table of
test AUROC / ECE side by side — what transfer learning bought you."""

from __future__ import annotations

from medtl.config import Config
from medtl.steps import load_pipeline, run_context, strategy_variant, summary_table

STRATEGIES = ("scratch", "feature_extraction", "fine_tune", "full")


def run(cfg: Config, strategies: tuple[str, ...] = STRATEGIES) -> dict:
    diagnosis = load_pipeline("diagnosis")
    rows = []
    with run_context(cfg.tracking, f"{cfg.name}-compare") as parent:
        for strategy in strategies:
            variant = strategy_variant(cfg, strategy, register=False)
            out = diagnosis.run(variant, nested=True)
            rows.append((strategy, out["evaluation"].metrics if out["evaluation"] else {}))
        table = summary_table(rows)
        parent.log_table(table.to_dict(orient="records"), "comparison.json")
    return {"table": table, "summary": table.to_string(index=False)}

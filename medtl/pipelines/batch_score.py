"""Batch scoring: a folder or manifest of new studies, scored with a registered model, as its own MLflow run."""

from __future__ import annotations

from pathlib import Path

from medtl.config import Config
from medtl.models.loader import load_any_model
from medtl.scoring import input_cases, score
from medtl.steps import run_context


def run(cfg: Config, model: str | None = None, out: str | None = None) -> dict:
    """Scores ``cfg.data.manifest`` with ``model`` (default: the config's registered model at its alias)."""
    uri = model or f"models:/{cfg.tracking.registered_model}@{cfg.tracking.alias}"
    bundle = load_any_model(uri)
    cases = input_cases(cfg.data.manifest, None)
    target = Path(out or Path(cfg.train.out_dir) / cfg.name / "predictions.csv")
    with run_context(cfg.tracking, f"score-{cfg.name}") as tracker:
        summary = score(bundle, cases, target, batch_size=cfg.score.batch_size, device=cfg.score.device, tracker=tracker)
    return {"summary": f"{target}: {summary.scored} scored, {len(summary.errors)} error(s)", "score": summary}

"""Batch scoring: a folder or manifest of new studies, scored with a registered model, as its own MLflow run."""

from __future__ import annotations

from pathlib import Path

from medtl.archive_output import ArchiveSummary
from medtl.config import Config
from medtl.config_sections import ScoreConfig
from medtl.errors import ConfigError
from medtl.models.loader import load_any_model
from medtl.scoring import input_cases, score, set_prevalence
from medtl.steps import run_context


def run(cfg: Config, model: str | None = None, out: str | None = None) -> dict:
    """Scores ``cfg.data.manifest`` with ``model`` (default: the config's registered model at its alias), on this
    machine or, with ``score.engine: spark`` or ``ray``, on that engine (Parquet out)."""
    if model is None and cfg.tracking.registered_model is None:
        raise ConfigError("tracking.registered_model: batch_score scores the config's registered model at tracking.alias; "
                          "set it, e.g. --set tracking.registered_model=pneumonia-demo")
    if cfg.data.manifest is None:
        raise ConfigError("data.manifest: batch_score scores the cases of a manifest; set it, e.g. --set data.manifest=new.csv")
    uri = model or f"models:/{cfg.tracking.registered_model}@{cfg.tracking.alias}"
    sc = cfg.score
    if sc.engine != "local" and sc.prevalence is not None:
        raise ConfigError(f"score.prevalence: the {sc.engine} engine scores the model as registered, without it; set "
                          "score.engine: local, or leave score.prevalence unset")
    if sc.engine != "local":
        target = Path(out or Path(cfg.train.out_dir) / cfg.name / "predictions.parquet")
        s = _archive_engine(uri, sc, cfg.data.manifest, cfg.data.data_root, target)
        said = f"{target}: {s.scored} scored now, {s.skipped_existing} already there, {s.errors} error row(s)"
        return {"summary": "".join([said, *(f"; {part}" for part in s.said)]), "score": s}
    bundle = load_any_model(uri)
    if isinstance(sc.prevalence, float):
        set_prevalence(bundle, sc.prevalence)
    cases = input_cases(cfg.data.manifest, None)
    target = Path(out or Path(cfg.train.out_dir) / cfg.name / "predictions.csv")
    workers = None if sc.num_workers == "auto" else int(sc.num_workers)
    with run_context(cfg.tracking, f"score-{cfg.name}") as tracker:
        summary = score(bundle, cases, target, batch_size=sc.batch_size, device=sc.device, num_workers=workers,
                        tracker=tracker, estimate_prevalence=sc.prevalence == "em")
    said = f"{target}: {summary.scored} scored, {len(summary.errors)} error(s)"
    if summary.batch is not None:
        said += f"; {summary.batch.message(applied=summary.prevalence_applied is not None)}"
    said += "".join(f"; {part}" for part in (summary.prevalence_note, summary.unlike and summary.unlike.message()) if part)
    return {"summary": said, "score": summary}


def _archive_engine(uri: str, sc: ScoreConfig, manifest: Path, data_root: Path | None, target: Path) -> ArchiveSummary:
    if sc.engine == "spark":
        from medtl.spark_scoring import score_spark

        return score_spark(uri, manifest, target, sc.spark_master, data_root, sc.chunk)
    from medtl.ray_scoring import score_ray

    return score_ray(uri, manifest, target, sc.ray_address, data_root, sc.chunk, sc.batch_size, sc.ray_workers, sc.ray_gpus)

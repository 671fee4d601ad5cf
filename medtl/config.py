"""Typed config: one frozen pydantic model per section, loaded from YAML with ``--set a.b=c`` overrides.

A config is data. Code takes the section it needs (``cfg.train``), never the whole object, and every
run saves its resolved config next to its results.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from medtl.config_errors import describe_errors
from medtl.config_sections import (
    AdaptationConfig,
    DataConfig,
    EvaluateConfig,
    ModelConfig,
    ScoreConfig,
    Section,
    StudyConfig,
    TrackingConfig,
    TrainConfig,
    TransferConfig,
)
from medtl.errors import ConfigError


class KeyTwice(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping: PyYAML keeps the last silently, so a second
    ``train:`` section would drop every setting of the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # what a merge key brings in may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):  # a key YAML itself cannot take says so
                continue
            if key in lines:
                raise KeyTwice(key, key_node.start_mark.line + 1, lines[key])
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    adaptation: AdaptationConfig = Field(default_factory=AdaptationConfig)
    study: StudyConfig = Field(default_factory=StudyConfig)
    name: str = "medtl"

    @model_validator(mode="before")
    @classmethod
    def _one_number_patch(cls, values: Any) -> Any:
        """``train.patch_size: 96`` is 96 on every axis the data section has, as ``data.image_size: 96`` is."""
        train, data = (values.get(k) if isinstance(values, dict) else None for k in ("train", "data"))
        patch = train.get("patch_size") if isinstance(train, dict) else None
        if isinstance(patch, int) and not isinstance(patch, bool):
            axes = data.get("spatial_dims", 2) if isinstance(data, dict) else 2
            values = {**values, "train": {**train, "patch_size": [patch] * (axes if axes in (2, 3) else 2)}}
        return values

    @model_validator(mode="after")
    def _adaptation_can_act(self) -> "Config":
        method = self.adaptation.method
        if method in ("coral", "dann") and self.transfer.strategy == "feature_extraction":
            raise ValueError(f"adaptation.method {method} aligns features by training the backbone, which "
                             "transfer.strategy feature_extraction keeps frozen: use fine_tune or full, or "
                             "adaptation.method adabn")
        if self.train.mixup_alpha is not None and (self.data.task != "classification" or method in ("coral", "dann")):
            raise ValueError("train.mixup_alpha mixes class labels: it works for data.task classification without "
                             "adaptation.method coral or dann; set it to null")
        if self.evaluate.tta and (self.data.modality == "xray" or not self.data.augment):
            why = ("training flips no chest film (data.modality xray: not left-right symmetric)"
                   if self.data.modality == "xray" else "data.augment is false, so training flips nothing")
            raise ValueError(f"evaluate.tta averages each scan with its left-right mirror, the flip training augments "
                             f"with; {why}: set evaluate.tta to false")
        if self.transfer.probe_first and self.data.task != "classification":
            raise ValueError("transfer.probe_first fits a classification head on frozen features: it works for "
                             "data.task classification; set it to false")
        return self

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, v: str) -> str:
        import re

        if v in (".", "..") or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v):
            raise ValueError(f"name {v!r} must be one folder name: letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit (it names the run's folder)")
        return v

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict (paths as strings). A password in ``tracking.uri`` is masked: the dict is what run
        folders, checkpoints and registered models keep."""
        d = self.model_dump(mode="json")
        if d["tracking"]["uri"]:
            d["tracking"]["uri"] = redact_uri(d["tracking"]["uri"])
        return d


def redact_uri(uri: str) -> str:
    """``scheme://user:password@host/db`` -> ``scheme://***@host/db``: a store's credentials never reach a message,
    a log or a saved config."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def names_a_server(url: str) -> bool:
    """``url`` names a host, and a port from 1 to 65535 where it gives one: ``https://`` or ``http://host:abc``
    would otherwise fail deep in a client library, as its own exception."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return bool(parts.hostname) and parts.port != 0  # .port raises ValueError for a port out of range or no number
    except ValueError:
        return False


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["train.lr=0.01", "data.classes=[a,b]"]`` -> nested dict; values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=0.001")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is a value, not a section")
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(raw: dict[str, Any], source: str = "config", overridden: set[str] | None = None) -> Config:
    """Validate a plain dict into a Config, or raise ConfigError listing every problem."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        problems = describe_errors(err, Config, source, overridden)
        raise ConfigError("\n".join(problems)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML, apply overrides, validate; relative paths resolve against the config file's folder
    (the working folder when there is no file)."""
    raw: dict[str, Any] = {}
    source = "defaults"
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        source = str(path)
        if path.is_dir():
            raise ConfigError(f"{path}: a folder, not a config file; give the YAML file's path")
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found; check the path, or start one from the "
                              "defaults: medtl config show > my_config.yaml")
        try:
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
        except KeyTwice as twice:
            raise ConfigError(f"{path}: line {twice.line}: {twice.key!r} is given twice at one level (also line "
                              f"{twice.first}), and YAML would keep only the last; merge them into one") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text (saved as UTF-16, or not a text file?); save it as UTF-8") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            lines = path.read_text(encoding="utf-8").splitlines()
            tab = mark is not None and mark.line < len(lines) and "\t" in lines[mark.line]
            raise ConfigError(f"{path}:{where} is not valid YAML; fix the indentation or quoting there"
                              + (" (it holds a tab: YAML indents with spaces only)" if tab else "")) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config is a mapping of sections (data:, model:, train: ...), not a {type(loaded).__name__}")
        raw = loaded
        base_dir = path.resolve().parent
    base_dir = base_dir.resolve()
    parsed = parse_overrides(overrides)
    raw = _merge(raw, parsed)
    typed = set(flatten(parsed))
    cfg = build_config(raw, source, typed)
    return _resolve_paths(cfg, base_dir, typed)


def _resolve_paths(cfg: Config, base_dir: Path, typed: set[str]) -> Config:
    """Paths as a shell would read them (``~``, ``$SCRATCH``: a cluster's config names its storage so), then
    relative ones against ``base_dir``, except those ``typed`` at the shell with ``--set``, which resolve against
    the working folder as every other path typed there does; ``~/runs`` was a folder named ``~`` beside the config."""
    def fix(p: Path | None, key: str) -> Path | None:
        if p is None:
            return None
        expanded = os.path.expandvars(str(p))
        unset = re.search(r"\$\{?(\w+)", expanded)
        if unset:
            raise ConfigError(f"{key}: {p} names the environment variable {unset.group(1)}, which is not set; set it "
                              "or give the path itself")
        p = Path(expanded).expanduser()
        return p if p.is_absolute() else Path(os.path.normpath((Path.cwd() if key in typed else base_dir) / p))

    data = cfg.data.model_copy(update={k: fix(getattr(cfg.data, k), f"data.{k}")
                                       for k in ("manifest", "cache_dir", "data_root") if getattr(cfg.data, k)})
    model = cfg.model.model_copy(update={"weights": fix(cfg.model.weights, "model.weights")} if cfg.model.weights else {})
    adaptation = cfg.adaptation.model_copy(
        update={"target_manifest": fix(cfg.adaptation.target_manifest, "adaptation.target_manifest")}
        if cfg.adaptation.target_manifest else {})
    train = cfg.train.model_copy(update={"out_dir": fix(cfg.train.out_dir, "train.out_dir")})
    return cfg.model_copy(update={"data": data, "model": model, "adaptation": adaptation, "train": train})


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``, for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out

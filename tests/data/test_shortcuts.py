"""Labels that go with the films' size or view, said before anything trains (Zech et al. 2018)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtl.data.check import check_manifest
from medtl.data.manifest import read_manifest
from medtl.data.shortcuts import cramers_v, shortcuts
from tests.conftest import run_cli


def films(folder, rows):
    """PNG films of the given (case, label, width, height, view) and their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for case, _, w, h, _ in rows:
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(folder / f"{case}.png")
    pd.DataFrame([{"case_id": c, "image": f"{c}.png", "label": y, "view": v} for c, y, _, _, v in rows]
                 ).to_csv(folder / "m.csv", index=False)
    return folder / "m.csv"


def test_labels_that_go_with_the_film_size_are_said_by_the_check_and_the_training(tmp_path, caplog):
    """Pneumonia films exported at 32 px by one hospital, normal ones at 40 px by another: a model may learn the
    size. Nothing used to say so."""
    rows = ([(f"p{i}", "pneumonia", 32, 32, None) for i in range(18)] + [(f"q{i}", "pneumonia", 40, 40, None) for i in range(2)]
            + [(f"n{i}", "normal", 40, 40, None) for i in range(16)] + [(f"m{i}", "normal", 32, 32, None) for i in range(4)])
    m = films(tmp_path / "sized", rows)
    res = run_cli("manifest", "check", str(m))
    said = " ".join(res.stdout.split())
    observed = np.array([[16, 2], [4, 18]])  # rows 40×40, 32×32; columns normal, pneumonia
    expected = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / observed.sum()
    by_hand = np.sqrt(((observed - expected) ** 2 / expected).sum() / observed.sum())  # 2×2: min(r, c) - 1 = 1
    assert cramers_v(observed) == pytest.approx(by_hand)
    assert res.returncode == 0, said  # a note, not a problem of any one case
    assert f"note: the labels go with the image size (Cramér's V {by_hand:.2f}): 32×32 82% pneumonia (n 22); 40×40 89% normal (n 18)" in said
    from medtl.config import load_config
    from medtl.log import logger
    from medtl.train.data import prepare_cases

    cfg = load_config(None, [f"data.manifest={m}", "data.image_size=16", "data.classes=[normal,pneumonia]"])
    logger.addHandler(caplog.handler)
    try:
        prepared = prepare_cases(cfg.data, 0, read_manifest(m), tmp_path / "out")
    finally:
        logger.removeHandler(caplog.handler)
    assert "m.csv: the labels go with the image size" in caplog.text
    assert len(prepared.shortcuts) == 1 and prepared.shortcuts[0].startswith("the labels go with the image size")


def test_sizes_and_views_that_hold_both_classes_alike_say_nothing_and_many_sizes_are_banded(tmp_path):
    balanced = [(f"c{i}", ["normal", "pneumonia"][i % 2], [32, 40][(i // 2) % 2], 32, ["PA", "AP"][(i // 4) % 2])
                for i in range(40)]
    m = read_manifest(films(tmp_path / "balanced", balanced))
    seen = {}
    check_manifest(m, seen=seen)
    assert shortcuts(m.table, seen) == []
    icu = [(f"c{i}", "pneumonia" if i < 18 else "normal", 20 + i, 24, "AP" if i < 20 else "PA") for i in range(40)]
    m = read_manifest(films(tmp_path / "icu", icu))  # the sick filmed AP in bed; 40 sizes, one per film
    seen = {}
    check_manifest(m, seen=seen)
    said = shortcuts(m.table, seen)
    assert len(said) == 2 and "the labels go with the image size" in said[0] and " pixels 100% " in said[0]
    assert said[1].startswith("the labels go with the view (Cramér's V 0.90): AP 90% pneumonia (n 20); PA 100% normal (n 20)")


def test_labels_that_go_with_a_configured_site_are_said_and_a_measurement_such_as_age_is_not(tmp_path):
    rows = [(f"c{i}", "pneumonia" if i < 20 else "normal", 32, 32, None) for i in range(40)]
    m = films(tmp_path / "sites", rows)
    table = pd.read_csv(m)
    table["site"] = ["St Mary"] * 19 + ["North"] * 21  # one hospital sent the pneumonia films
    table["age"] = range(40)  # 40 values: a measurement, not a source
    table.to_csv(m, index=False)
    manifest = read_manifest(m)
    seen = {}
    check_manifest(manifest, seen=seen)
    assert shortcuts(manifest.table, seen) == []  # a column no config names is not read
    said = shortcuts(manifest.table, seen, ["site", "age"])
    assert len(said) == 1 and said[0].startswith("the labels go with the site (Cramér's V 0.95): North 95% normal (n 21)")
    res = run_cli("manifest", "check", str(m), "--set", "data.subgroups=[site]", "--set", "data.image_size=16")
    assert "note: the labels go with the site" in " ".join(res.stdout.split()), res.stdout

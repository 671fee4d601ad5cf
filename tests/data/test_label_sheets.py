"""Label sheets as public chest X-ray sets ship them: keyed by file, a column per finding, patients in folders."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtl.data.build import build_manifest
from medtl.data.manifest import read_manifest
from tests.conftest import run_cli


def film(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8)).save(path)


CARDIOMEGALY = ["1.0", "0.0", "-1.0", None, "1.0", "-1.0", "0.0", "1.0"]
"""Patient p's two studies take values 2p and 2p+1."""


def chexpert_like(root: Path) -> Path:
    """CheXpert's layout: PATIENT/STUDY/view1_frontal.jpg, every file of one name, and a sheet keyed by its path
    with a column per finding (1, 0, -1 uncertain, blank not mentioned) and none for patients."""
    rows = []
    for p in range(1, 5):
        for s in (1, 2):
            rel = f"CheXpert-v1.0-small/train/patient{p:05d}/study{s}/view1_frontal.jpg"
            film(root / rel, 10 * p + s)
            rows.append({"Path": rel, "Sex": "Female", "No Finding": None,
                         "Cardiomegaly": CARDIOMEGALY[2 * (p - 1) + s - 1], "Edema": "1.0" if p == s else "0.0"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root / "train.csv"


def test_a_chexpert_sheet_keyed_by_path_joins_its_films_and_groups_each_patients_studies(tmp_path, caplog):
    """Such a sheet used to stop the build ("needs a case_id column"), and a patient's two studies, as separate
    cases of no patient, could land one in training and one in test."""
    import logging

    sheet = chexpert_like(tmp_path)
    caplog.set_level(logging.INFO, logger="medtl")
    build_manifest(tmp_path, tmp_path / "m.csv", labels=sheet, ids="path")
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "names scans by its 'Path' column: 8 of its 8 rows name a scan" in said
    assert f"`medtl manifest finding {tmp_path / 'm.csv'} Cardiomegaly --out {tmp_path / 'cardiomegaly.csv'}`" in said
    assert "patient_id from the patient folder each scan lies in, pseudonymised: 4 patients" in said
    table = pd.read_csv(tmp_path / "m.csv", dtype=str).set_index("image")
    for p in range(1, 5):
        for s in (1, 2):
            value = table.loc[f"CheXpert-v1.0-small/train/patient{p:05d}/study{s}/view1_frontal.jpg", "Cardiomegaly"]
            assert (None if pd.isna(value) else value) == CARDIOMEGALY[2 * (p - 1) + s - 1]
    patients = table.groupby("patient_id").size()
    assert len(patients) == 4 and (patients == 2).all()
    assert [table["patient_id"].iloc[i] == table["patient_id"].iloc[i + 1] for i in (0, 2, 4, 6)] == [True] * 4
    assert "Path" not in table and not any("patient0000" in str(v) for v in table["patient_id"])
    assert "patient0000" not in said  # a folder may be named with a hospital number: never shown


def test_a_findings_column_becomes_one_findings_manifest_with_the_uncertain_policy_asked_for(tmp_path):
    sheet = chexpert_like(tmp_path)
    build_manifest(tmp_path, tmp_path / "m.csv", labels=sheet, ids="path")
    args = ("manifest", "finding", str(tmp_path / "m.csv"), "Cardiomegaly", "--out", str(tmp_path / "c.csv"))
    res = run_cli(*args)
    assert res.returncode == 2 and "2 cases mark Cardiomegaly -1 (uncertain)" in res.stderr, res.stderr
    assert "--uncertain present (U-Ones)" in res.stderr and not (tmp_path / "c.csv").exists()
    ones = {"1.0": "present", "0.0": "absent", None: "absent"}  # blank: not mentioned in the report
    for policy, n in (("present", 8), ("absent", 8), ("drop", 6)):
        res = run_cli(*args, "--uncertain", policy)
        assert res.returncode == 0, res.stderr
        want = [f"Cardiomegaly_{ones.get(v, policy)}" for v in CARDIOMEGALY if not (v == "-1.0" and policy == "drop")]
        one = read_manifest(tmp_path / "c.csv")
        assert list(one.table["label"]) == want and len(one.table) == n
        assert f"Cardiomegaly_present {want.count('Cardiomegaly_present')}" in res.stdout
        assert one.table["image_path"].map(lambda p: Path(p).is_file()).all()
    for finding, said in (("cardiomegaly", "write 'Cardiomegaly'"), ("No Finding", "no case marks it 1 (present)"),
                          ("Sex", "Sex is 'Female'; a finding's column holds 1 (present)")):
        res = run_cli("manifest", "finding", str(tmp_path / "m.csv"), finding, "--out", str(tmp_path / "x.csv"))
        assert res.returncode == 2 and said in res.stderr and not (tmp_path / "x.csv").exists(), res.stderr
    assert run_cli(*args, "--uncertain", "maybe").returncode == 2
    res = run_cli("manifest", "check", str(tmp_path / "m.csv"))  # fine to score; to train on, a finding's manifest
    assert res.returncode == 0 and "Cardiomegaly, Edema hold findings" in " ".join(res.stdout.split()), res.stdout
    res = run_cli("train", "--set", f"data.manifest={tmp_path / 'm.csv'}", "--set", f"train.out_dir={tmp_path}")
    said = " ".join(res.stderr.split())
    assert res.returncode == 2 and "Cardiomegaly, Edema hold findings" in said, said  # not: rename one 'label'
    assert f"`medtl manifest finding {tmp_path / 'm.csv'} Cardiomegaly --out {tmp_path / 'cardiomegaly.csv'}`" in said


def test_a_chestxray14_sheet_joins_by_image_index_with_its_finding_labels_and_patient_ids(tmp_path):
    names = [f"{p:08d}_{k:03d}.png" for p in (1, 2, 3) for k in (0, 1)]
    for i, name in enumerate(names):
        film(tmp_path / "images" / name, i)
    labels = ["Effusion", "Effusion|Infiltration", "No Finding", "Infiltration", "Mass|Effusion", "No Finding"]
    pd.DataFrame({"Image Index": names, "Finding Labels": labels, "Follow-up #": ["0", "1"] * 3,
                  "Patient ID": ["1", "1", "2", "2", "3", "3"]}).to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    table = build_manifest(tmp_path / "images", tmp_path / "m.csv", labels=tmp_path / "Data_Entry_2017.csv")
    assert list(table.set_index("case_id").loc[[n[:-4] for n in names], "label"]) == labels
    assert table.groupby("patient_id").size().tolist() == [2, 2, 2]
    res = run_cli("manifest", "finding", str(tmp_path / "m.csv"), "Effusion", "--out", str(tmp_path / "e.csv"))
    assert res.returncode == 0 and "Effusion_absent 3, Effusion_present 3" in res.stdout, res.stderr
    pd.DataFrame({"Image": [f"images/{n}" for n in names], "Label": labels}).to_csv(tmp_path / "s.csv", index=False)
    table = build_manifest(tmp_path / "images", tmp_path / "m2.csv", labels=tmp_path / "s.csv")
    assert list(table.set_index("case_id").loc[[n[:-4] for n in names], "label"]) == labels  # keyed by its image


def test_a_sheet_whose_file_names_repeat_is_not_joined_on_them_and_a_folder_above_the_data_names_no_patient(tmp_path):
    root = tmp_path / "sub-01" / "scans"  # the researcher's own folder, above the data: no patient of the scans
    for study in ("a", "b"):
        film(root / study / "view1_frontal.jpg", ord(study))
    pd.DataFrame({"file": ["view1_frontal.jpg"], "label": ["x"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(Exception, match="a column of the scans' file names or paths"):
        build_manifest(root, tmp_path / "m.csv", labels=tmp_path / "s.csv", ids="path")
    table = build_manifest(root, tmp_path / "m.csv", ids="path")
    assert table["patient_id"].nunique() == 2


def test_a_sheet_whose_folders_above_the_scans_are_named_otherwise_still_joins_on_the_path_below(tmp_path):
    """CheXpert's sheet says ``CheXpert-v1.0-small/train/...``; unpacked into ``chexpert/``, the scans' path below
    the folder given still names each one."""
    sheet = chexpert_like(tmp_path / "shipped")
    (tmp_path / "shipped" / "CheXpert-v1.0-small").rename(tmp_path / "chexpert")
    table = build_manifest(tmp_path / "chexpert", tmp_path / "m.csv", labels=sheet, ids="path")
    assert table["Cardiomegaly"].notna().sum() == sum(v is not None for v in CARDIOMEGALY)
    joined = table.set_index("image")["Cardiomegaly"]
    assert joined["chexpert/train/patient00001/study2/view1_frontal.jpg"] == CARDIOMEGALY[1]


def test_a_public_sets_official_test_list_is_the_test_split_whole_patients_and_all(tmp_path):
    """ChestX-ray14 ships test_list.txt: published figures are on those films, so a random split is not comparable."""
    names = [f"{p:08d}_{k:03d}.png" for p in range(1, 13) for k in (0, 1)]
    for i, name in enumerate(names):
        film(tmp_path / "images" / name, i)
    pd.DataFrame({"Image Index": names, "Finding Labels": ["Effusion", "No Finding"] * 12,
                  "Patient ID": [str(p) for p in range(1, 13) for _ in (0, 1)]}).to_csv(tmp_path / "entry.csv", index=False)
    build_manifest(tmp_path / "images", tmp_path / "m.csv", labels=tmp_path / "entry.csv")
    listed = names[:6]  # patients 1-3
    (tmp_path / "test_list.txt").write_text("\n".join(listed[:1] + ["99999999_000.png"] + listed[1:]) + "\n")
    res = run_cli("manifest", "split", str(tmp_path / "m.csv"), "--test-list", str(tmp_path / "test_list.txt"),
                  "--val", "0.25", "--out", str(tmp_path / "s.csv"))
    assert res.returncode == 0, res.stderr
    assert "1 of its 7 names match no case (e.g. 99999999_000.png)" in " ".join(res.stderr.split())
    split = pd.read_csv(tmp_path / "s.csv", dtype=str).set_index("case_id")["split"]
    assert set(split[split == "test"].index) == {n[:-4] for n in listed}
    assert (split == "val").sum() > 0 and (split == "train").sum() > 0
    assert pd.read_csv(tmp_path / "s.csv", dtype=str).groupby("patient_id")["split"].nunique().max() == 1
    (tmp_path / "torn.txt").write_text(names[0] + "\n")  # patient 1's first film, not their second
    res = run_cli("manifest", "split", str(tmp_path / "m.csv"), "--test-list", str(tmp_path / "torn.txt"), "--out",
                  str(tmp_path / "t.csv"))
    assert res.returncode == 2 and f"case {names[1][:-4]} is not listed" in res.stderr and not (tmp_path / "t.csv").exists()
    (tmp_path / "none.txt").write_text("a.png\nb.png\n")
    res = run_cli("manifest", "split", str(tmp_path / "m.csv"), "--test-list", str(tmp_path / "none.txt"), "--out",
                  str(tmp_path / "t.csv"))
    assert res.returncode == 2 and "none of its 2 names is a case of m.csv" in res.stderr, res.stderr
    (tmp_path / "all.txt").write_text("\n".join(names))
    res = run_cli("manifest", "split", str(tmp_path / "m.csv"), "--test-list", str(tmp_path / "all.txt"), "--out",
                  str(tmp_path / "t.csv"))
    assert res.returncode == 2 and "names all 24 cases, so none is left to train on" in res.stderr, res.stderr


def test_chexperts_train_and_valid_sheets_label_one_manifest_and_valid_is_the_test_split(tmp_path):
    """CheXpert ships train.csv and valid.csv: both sheets are one, and valid.csv, as a list, names the test films."""
    chexpert_like(tmp_path)  # train/ films and train.csv
    rows = []
    for p in (70, 71, 72):
        rel = f"CheXpert-v1.0-small/valid/patient{p:05d}/study1/view1_frontal.jpg"
        film(tmp_path / rel, p)
        rows.append({"Path": rel, "Sex": "Male", "No Finding": None, "Cardiomegaly": "1.0", "Edema": "0.0"})
    pd.DataFrame(rows).to_csv(tmp_path / "valid.csv", index=False)
    res = run_cli("manifest", "build", str(tmp_path / "CheXpert-v1.0-small"), "--ids", "path", "--labels",
                  str(tmp_path / "train.csv"), "--labels", str(tmp_path / "valid.csv"), "--out", str(tmp_path / "m.csv"))
    assert res.returncode == 0 and "have no row" not in res.stderr, res.stderr
    cardiomegaly = CARDIOMEGALY + ["1.0"] * 3
    assert (f"findings present (uncertain): Cardiomegaly {cardiomegaly.count('1.0')} ({cardiomegaly.count('-1.0')}), "
            "Edema 2 (0)") in res.stdout, res.stdout
    table = pd.read_csv(tmp_path / "m.csv", dtype=str)
    assert len(table) == 11 and table["Sex"].notna().all()
    res = run_cli("manifest", "split", str(tmp_path / "m.csv"), "--test-list", str(tmp_path / "valid.csv"),
                  "--val", "0", "--out", str(tmp_path / "s.csv"))
    assert res.returncode == 0, res.stderr
    split = pd.read_csv(tmp_path / "s.csv", dtype=str).set_index("image")["split"]
    assert sorted(split[split == "test"].index) == sorted(r["Path"] for r in rows)
    assert "match no case" not in res.stderr  # its header is no name
    res = run_cli("manifest", "build", str(tmp_path / "CheXpert-v1.0-small"), "--ids", "path", "--labels",
                  str(tmp_path / "train.csv"), "--labels", str(tmp_path / "train.csv"), "--out", str(tmp_path / "t.csv"))
    assert res.returncode == 0 and "8 row(s) repeat an earlier row exactly" in " ".join(res.stderr.split())


def test_a_manifest_that_names_no_patients_is_said_to_take_each_case_as_its_own_patient(tmp_path, caplog):
    """A hand-written manifest without patient_id split one patient's films across training and test, unsaid."""
    import logging

    from medtl.data.splits import split_manifest

    for i in range(12):
        film(tmp_path / f"f{i}.png", i)
    table = pd.DataFrame({"case_id": [f"f{i}" for i in range(12)], "image": [f"f{i}.png" for i in range(12)],
                          "label": ["a", "b"] * 6})
    table.to_csv(tmp_path / "m.csv", index=False)
    table.assign(patient_id=[f"p{i // 2}" for i in range(12)]).to_csv(tmp_path / "p.csv", index=False)
    caplog.set_level(logging.WARNING, logger="medtl")
    split_manifest(read_manifest(tmp_path / "m.csv").table, 0.25, 0.25)
    assert any("each case is taken as its own patient" in r.getMessage() for r in caplog.records)
    caplog.clear()
    split_manifest(read_manifest(tmp_path / "p.csv").table, 0.25, 0.25)
    assert not caplog.records
    res = run_cli("manifest", "check", str(tmp_path / "m.csv"))
    assert "no patient_id: each case is taken as its own patient" in " ".join(res.stdout.split()), res.stdout
    assert "own patient" not in run_cli("manifest", "check", str(tmp_path / "p.csv")).stdout


def test_a_missing_label_sheet_is_said_before_the_folder_is_walked(tmp_path, monkeypatch):
    import medtl.data.build as build
    from medtl.errors import ManifestError

    film(tmp_path / "scans" / "a.png", 0)
    monkeypatch.setattr(build, "discover_cases", lambda *a, **k: pytest.fail("walked 100,000 files first"))
    with pytest.raises(ManifestError, match="valid.csv: labels file not found"):
        build_manifest(tmp_path / "scans", tmp_path / "m.csv", labels=[tmp_path / "scans" / "a.png", tmp_path / "valid.csv"])


def test_a_sheets_view_columns_become_the_manifests_view_and_choose_the_films_a_model_takes(tmp_path):
    """CheXpert states each film's view in ``Frontal/Lateral`` and ``AP/PA``, ChestX-ray14 in ``View Position``; a
    PNG or JPEG states none itself. Those columns used to stay subgroup material: a model of frontal films trained on
    the laterals too, and scored them, without a word."""
    sides = [("Frontal", "PA"), ("Frontal", "AP"), ("Lateral", None), ("Frontal", None)] * 3
    rows = []
    for i, (side, projection) in enumerate(sides):
        rel = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_{side.lower()}.jpg"
        film(tmp_path / rel, i)
        rows.append({"Path": rel, "Frontal/Lateral": side, "AP/PA": projection, "Edema": ["1.0", "0.0"][i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    table = build_manifest(tmp_path, tmp_path / "m.csv", labels=tmp_path / "train.csv", ids="path")
    assert table["view"].tolist() == ["PA", "AP", "LATERAL", "FRONTAL"] * 3
    assert {"Frontal/Lateral", "AP/PA"} <= set(table.columns)  # the sheet's own columns stay
    names = [f"{p:08d}_000.png" for p in range(4)]
    for i, name in enumerate(names):
        film(tmp_path / "nih" / name, i)
    pd.DataFrame({"Image Index": names, "Finding Labels": ["Effusion", "No Finding"] * 2,
                  "View Position": ["PA", "AP", "pa", "AP"]}).to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    build_manifest(tmp_path / "nih", tmp_path / "nih.csv", labels=tmp_path / "Data_Entry_2017.csv")
    assert read_manifest(tmp_path / "nih.csv").table["view"].tolist() == ["PA", "AP", "PA", "AP"]

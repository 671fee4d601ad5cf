"""Manifest building from a mixed folder, patient-level splits, and the MedMNIST importer."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtl.data.build import build_manifest
from medtl.data.manifest import read_manifest
from medtl.data.readers import load_scan
from medtl.data.sources import import_medmnist
from medtl.data.splits import fold_manifest, split_manifest, write_split
from medtl.data.synthetic import synthetic_volume, write_ct_series, write_nifti
from medtl.errors import ManifestError
from tests.conftest import run_cli

PNEUMONIA = Path(__file__).resolve().parents[2] / "medtl" / "resources" / "pneumoniamnist.npz"


def test_build_groups_two_series_in_one_folder_and_joins_labels(tmp_path):
    rng = np.random.default_rng(0)
    scans = tmp_path / "scans"
    a, _ = synthetic_volume(rng, (8, 8, 5), False)
    b, _ = synthetic_volume(rng, (8, 8, 3), True)
    uid_a = write_ct_series(scans / "mixed", a, patient_tag="SECRET", seed=1)
    uid_b = write_ct_series(scans / "mixed", b, patient_tag="SECRET", seed=2)
    write_ct_series(scans / "alone", a, seed=3)
    write_nifti(scans / "nii" / "vol1.nii.gz", a)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"case_id": ["alone", "vol1"], "label": ["normal", "lesion"], "site": ["A", "B"]}).to_csv(labels, index=False)
    out = tmp_path / "m.csv"
    table = build_manifest(scans, out, labels=labels)
    assert len(table) == 4
    assert set(table.loc[table["label"].notna(), "case_id"]) == {"alone", "vol1"}
    assert "SECRET" not in out.read_text()
    m = read_manifest(out)
    shapes = sorted(tuple(load_scan(p).shape) for p in m.table["image_path"])
    assert shapes == [(1, 8, 8, 3), (1, 8, 8, 5), (1, 8, 8, 5), (1, 8, 8, 5)]
    mixed = m.table[m.table["image"].str.contains("#series=")]
    assert {r.split("#series=")[1] for r in mixed["image"]} == {uid_a, uid_b}
    depths = sorted(load_scan(p).shape[-1] for p in mixed["image_path"])
    assert depths == [3, 5]
    assert m.table["patient_id"].str.startswith("p_").all()  # the sheet had no patient_id: salted hashes
    pd.DataFrame({"case_id": ["vol1", "alone", "vol1"], "label": ["normal", "normal", "lesion"]}).to_csv(labels, index=False)
    res = run_cli("manifest", "build", str(scans), "--labels", str(labels), "--out", str(tmp_path / "m2.csv"))
    assert res.returncode != 0 and "case vol1 has 2 rows; give one row per case_id" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "m2.csv").exists()
    pd.DataFrame({"case_id": ["vol1", "alone", "vol1"], "label": ["lesion", "normal", "lesion"]}).to_csv(labels, index=False)
    res = run_cli("manifest", "build", str(scans), "--labels", str(labels), "--out", str(tmp_path / "m2.csv"))
    assert res.returncode == 0 and "1 row(s) repeat an earlier row exactly (e.g. case vol1)" in res.stderr, res.stderr
    built = pd.read_csv(tmp_path / "m2.csv").set_index("case_id")
    assert built.index.is_unique and built.loc["vol1", "label"] == "lesion" and built.loc["alone", "label"] == "normal"
    pd.DataFrame({"case_id": ["vol1", "alone"], "diagnosis": ["lesion", "normal"]}).to_csv(labels, index=False)
    res = run_cli("manifest", "build", str(scans), "--labels", str(labels), "--out", str(tmp_path / "m3.csv"))
    assert res.returncode == 0 and "has no label column (it has case_id, diagnosis)" in res.stderr, res.stderr
    pd.DataFrame({"case_id": ["vol1", "alone.nii.gz"], "label": ["lesion", "normal"]}).to_csv(labels, index=False)
    build_manifest(scans, tmp_path / "m4.csv", labels=labels)  # a sheet keyed by file name, as public sets are
    assert pd.read_csv(tmp_path / "m4.csv").set_index("case_id").loc[["vol1", "alone"], "label"].tolist() == ["lesion", "normal"]


def pacs_export(root: Path) -> Path:
    """The layout PACS exports write: PATIENT/STUDY/SERIES folders whose series names repeat across patients,
    a DICOMDIR at the top and a report (SR, no pixels) in a series of its own."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    vol, _ = synthetic_volume(np.random.default_rng(0), (12, 12, 4), True)
    for patient in ("P1", "P2"):
        write_ct_series(root / patient / "ST1" / "SE0001", vol, seed=int(patient[1]))
    for path, sop_class in ((root / "DICOMDIR", "1.2.840.10008.1.3.10"),
                            (root / "P1" / "ST1" / "SE0099" / "IM0001", "1.2.840.10008.5.1.4.1.1.88.22")):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(path), pydicom.Dataset(), file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID, generate_uid()
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    return root


def test_a_pacs_export_whose_series_folders_repeat_never_gives_two_scans_one_case_id(tmp_path):
    from medtl.scoring import input_cases

    export = pacs_export(tmp_path / "export")
    for refuse in (lambda: build_manifest(export, tmp_path / "m.csv"), lambda: input_cases(None, export)):
        with pytest.raises(ManifestError, match=r"P1/ST1/SE0001 and P2/ST1/SE0001 would both be case 'SE0001'; --ids path"):
            refuse()
    table = build_manifest(export, tmp_path / "m.csv", ids="path")
    assert list(table["case_id"]) == ["P1_ST1_SE0001", "P2_ST1_SE0001"]  # the DICOMDIR and the report are no cases
    assert [c["case_id"] for c in input_cases(None, export, "path")] == list(table["case_id"])
    result = run_cli("manifest", "build", str(export), "--out", str(tmp_path / "m2.csv"), "--ids", "study")
    assert result.returncode == 2 and "'study': use folder or path" in result.stderr


def test_a_rebuild_never_drops_what_the_manifest_held_and_masks_must_match(tmp_path):
    scans = tmp_path / "scans"
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        write_nifti(scans / f"{case}.nii.gz", synthetic_volume(rng, (8, 8, 3), True)[0])
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"case_id": ["a", "b"], "label": ["normal", "lesion"]}).to_csv(labels, index=False)
    out = tmp_path / "m.csv"
    build_manifest(scans, out, labels=labels)
    labelled = out.read_bytes()
    with pytest.raises(ManifestError, match="has column.s. label that the new one would not"):
        build_manifest(scans, out)  # used to replace the labelled manifest with an unlabelled one
    assert out.read_bytes() == labelled
    build_manifest(scans, out, labels=labels)  # a rebuild that keeps every column is fine
    with pytest.raises(ManifestError, match="that is the label sheet"):
        build_manifest(scans, labels, labels=labels)
    with pytest.raises(ManifestError, match="--masks .*nowhere: not a folder"):
        build_manifest(scans, tmp_path / "m2.csv", masks=tmp_path / "nowhere")  # was ignored without a word
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "notes.txt").write_text("no mask here")
    with pytest.raises(ManifestError, match="no file there is named like a case"):
        build_manifest(scans, tmp_path / "m2.csv", masks=tmp_path / "masks")  # was an empty mask column
    assert not (tmp_path / "m2.csv").exists()


def make_table(n_patients=40, per_patient=2, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "pos" if rng.random() < 0.3 else "neg"
        for k in range(per_patient):
            rows.append({"case_id": f"c{p}_{k}", "patient_id": f"p{p}", "image": "x", "label": label})
    return pd.DataFrame(rows)


def test_split_is_patient_disjoint_stratified_and_deterministic():
    table = make_table()
    a = split_manifest(table, 0.2, 0.2, seed=3)
    b = split_manifest(table, 0.2, 0.2, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a.groupby("patient_id")["split"].nunique().max() == 1
    overall = (table["label"] == "pos").mean()
    for split in ("train", "val", "test"):
        part = a[a["split"] == split]
        assert 0.1 < len(part) / len(a) < 0.7
        assert abs((part["label"] == "pos").mean() - overall) < 0.2
    c = split_manifest(table, 0.2, 0.2, seed=4)
    assert not c["split"].equals(a["split"])


def test_folds_are_patient_disjoint():
    folds = fold_manifest(make_table(), 5, seed=0)
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]


def test_cli_split_writes_manifest(tmp_path):
    table = make_table()
    table.to_csv(tmp_path / "m.csv", index=False)
    res = run_cli("manifest", "split", str(tmp_path / "m.csv"), "--out", str(tmp_path / "m2.csv"), "--seed", "1")
    assert res.returncode == 0, res.stderr
    assert "is replaced" not in res.stderr  # no split column there to replace
    assert set(pd.read_csv(tmp_path / "m2.csv")["split"]) == {"train", "val", "test"}
    for val, test in (("-1", "0.15"), ("0.6", "0.6")):
        res = run_cli("manifest", "split", str(tmp_path / "m.csv"), "--out", str(tmp_path / "m3.csv"), "--val", val, "--test", test)
        assert res.returncode != 0 and "must be fractions in [0, 1) that add up to less than 1" in res.stderr
        assert "Traceback" not in res.stderr and not (tmp_path / "m3.csv").exists()
    for folds in ("0", "1"):  # 0 wrote a train/val/test split instead, 1 was a scikit-learn error
        res = run_cli("manifest", "split", str(tmp_path / "m.csv"), "--out", str(tmp_path / "f.csv"), "--folds", folds)
        assert res.returncode == 2 and f"--folds {folds}: give 2 or more folds" in res.stderr and not (tmp_path / "f.csv").exists()
    before = (tmp_path / "m2.csv").read_bytes()
    res = run_cli("manifest", "split", str(tmp_path / "m2.csv"), "--out", str(tmp_path / "m2.csv"), "--seed", "7")
    assert res.returncode == 2 and "that is the manifest being split" in res.stderr
    assert (tmp_path / "m2.csv").read_bytes() == before  # its split is kept, not replaced in place
    res = run_cli("manifest", "split", str(tmp_path / "m2.csv"), "--out", str(tmp_path / "m4.csv"), "--seed", "7")
    assert res.returncode == 0 and "its split column" in res.stderr and "is replaced" in res.stderr


def test_split_written_elsewhere_keeps_its_files_reachable(tmp_path):
    """A split manifest written in another folder gets paths relative to that folder, or a refusal naming the case
    when its files lie outside it."""
    from medtl.data.synthetic import make_classification_set

    m = make_classification_set(tmp_path / "data", n=40, kind="png", size=(16, 16))
    res = run_cli("manifest", "split", str(m), "--out", str(tmp_path / "split.csv"))
    assert res.returncode == 0, res.stderr
    written = pd.read_csv(tmp_path / "split.csv")
    assert written["image"].str.startswith("data/").all()
    assert list(read_manifest(tmp_path / "split.csv").table["image_path"]) == list(read_manifest(m).table["image_path"])
    (tmp_path / "elsewhere").mkdir()
    res = run_cli("manifest", "split", str(m), "--out", str(tmp_path / "elsewhere" / "split.csv"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "is outside" in res.stderr and "case" in res.stderr and not (tmp_path / "elsewhere" / "split.csv").exists()


def test_medmnist_importer_keeps_official_split_counts(tmp_path):
    manifest = import_medmnist(PNEUMONIA, tmp_path / "pm", ["normal", "pneumonia"],
                               limit={"train": 300})
    table = pd.read_csv(manifest)
    counts = table.groupby(["split", "label"]).size()
    assert counts["val", "normal"] == 135 and counts["val", "pneumonia"] == 389
    assert counts["test", "normal"] == 234 and counts["test", "pneumonia"] == 390
    assert 290 <= (table["split"] == "train").sum() <= 310
    # round trip: the PNG holds exactly the array's pixels
    arrays = np.load(PNEUMONIA)
    row = table[table["case_id"] == "test_00007"].iloc[0]
    img = load_scan(tmp_path / "pm" / row["image"])
    np.testing.assert_array_equal(img[0].numpy().T, arrays["test_images"][7].astype(np.float32))
    assert row["label"] == ["normal", "pneumonia"][int(arrays["test_labels"][7, 0])]

    for names, said in ((["normal"], "has labels 0 to 1; name 2 classes"), (["a", "a"], "the names must differ")):
        with pytest.raises(ManifestError, match=said):  # one name too few was an IndexError
            import_medmnist(PNEUMONIA, tmp_path / "bad", names, limit={"train": 10, "val": 10, "test": 10})


def test_nested_subsets_are_nested_patient_grouped_and_stratified():
    from medtl.data.splits import nested_subsets

    table = make_table(n_patients=60, per_patient=2)
    subsets = nested_subsets(table, [0.1, 0.25, 1.0], seed=3)
    small, mid, full = subsets[0.1], subsets[0.25], subsets[1.0]
    assert small < mid < full and full == set(table["case_id"])
    for chosen in (small, mid):
        part = table[table["case_id"].isin(chosen)]
        assert set(part["label"]) == {"pos", "neg"}  # every class, however small the share
        whole = table[table["patient_id"].isin(part["patient_id"])]
        assert set(whole["case_id"]) == chosen  # a patient comes with all their cases
    assert nested_subsets(table, [0.1], seed=4)[0.1] != small  # another seed, another draw


def test_a_patients_series_share_a_keyed_pseudonym_so_they_split_together(tmp_path, monkeypatch):
    """Two reconstructions of one patient's study were two patients to the split, so one could train while the
    other tested; the PatientID itself, or a guessable hash of it, must not reach the manifest."""
    import hashlib
    import stat

    import pydicom

    from medtl.data.pseudonyms import KEY_ENV, key_file

    vol, _ = synthetic_volume(np.random.default_rng(0), (8, 8, 4), True)
    for name, patient in (("soft", "1234567"), ("bone", "1234567"), ("other", "7654321")):
        write_ct_series(tmp_path / "scans" / name, vol, patient_tag=patient)
    table = build_manifest(tmp_path / "scans", tmp_path / "m.csv").set_index("case_id")
    ids = table["patient_id"]
    assert ids["soft"] == ids["bone"] != ids["other"] and ids["soft"].startswith("p_")
    raw = pydicom.dcmread(next((tmp_path / "scans" / "soft").iterdir())).PatientID  # "1234567-ID"
    text = (tmp_path / "m.csv").read_text()
    assert raw not in text and hashlib.sha256(raw.encode()).hexdigest()[:12] not in text
    assert stat.S_IMODE(key_file().stat().st_mode) == 0o600
    again = build_manifest(tmp_path / "scans", tmp_path / "m2.csv").set_index("case_id")["patient_id"]
    assert again.equals(ids)  # one key per machine: the same pseudonyms every build
    monkeypatch.setenv(KEY_ENV, "a cohort key shared by two sites")
    shared = build_manifest(tmp_path / "scans", tmp_path / "m3.csv").set_index("case_id")["patient_id"]
    assert shared["soft"] == shared["bone"] and shared["soft"] != ids["soft"]
    labels = pd.DataFrame({"case_id": ["soft", "bone", "other"], "patient_id": ["A", "B", "C"]})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    given = build_manifest(tmp_path / "scans", tmp_path / "m4.csv", labels=tmp_path / "labels.csv")
    assert list(given.set_index("case_id").loc[["soft", "bone", "other"], "patient_id"]) == ["A", "B", "C"]


def test_a_class_too_rare_for_every_split_is_named_once_in_medtls_words(caplog):
    import warnings

    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(40)], "patient_id": [f"p{i}" for i in range(40)],
                          "label": ["rare"] + ["a", "b"] * 19 + ["a"]})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        split_manifest(table, 0.15, 0.15, seed=0)
        fold_manifest(table, 5, seed=0)
    assert not [w for w in seen if "least populated" in str(w.message)]
    said = [r.getMessage() for r in caplog.records if "fewer cases than" in r.getMessage()]
    assert len(said) == 2 and "rare (1)" in said[0] and "splits" in said[0] and "folds" in said[1]


def test_a_manifest_write_that_fails_halfway_leaves_the_old_one_whole(tmp_path, monkeypatch):
    import errno

    vol, _ = synthetic_volume(np.random.default_rng(0), (8, 8, 4), True)
    for i in range(12):
        write_nifti(tmp_path / "scans" / f"c{i}.nii.gz", vol)
    out = tmp_path / "m.csv"
    build_manifest(tmp_path / "scans", out)
    before = out.read_bytes()
    real = pd.DataFrame.to_csv

    def full_disk(self, fh, *args, **kwargs):
        fh.write("case_id,patient_id,im")  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    for write in (lambda: build_manifest(tmp_path / "scans", out), lambda: write_split(out, tmp_path / "s.csv")):
        with pytest.raises(OSError):
            write()
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)
    assert out.read_bytes() == before and not (tmp_path / "s.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "scans"]  # no temporary file left behind


def test_score_input_never_scores_a_mask_filed_beside_its_scan():
    """`manifest build` pairs `<case>_mask` files with their scans; `score --input` scored them as scans."""
    import tempfile

    from medtl.scoring import input_cases

    with tempfile.TemporaryDirectory() as d:
        vol, mask = synthetic_volume(np.random.default_rng(0), (8, 8, 4), True)
        write_nifti(Path(d) / "a.nii.gz", vol)
        write_nifti(Path(d) / "a_mask.nii.gz", mask)
        write_nifti(Path(d) / "b_seg.nii.gz", vol)  # no case b: a scan of its own, whatever its name
        assert sorted(c["case_id"] for c in input_cases(None, Path(d))) == ["a", "b_seg"]


def test_labels_and_splits_from_class_folders(tmp_path):
    """The layout public image sets ship in: FOLDER/{train,val,test}/CLASS/scan, a DICOM series folder counting as a
    scan of the class folder that holds it."""
    from PIL import Image

    root = tmp_path / "chest_xray"
    film = (np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)
    for split, cls, name in (("train", "NORMAL", "a"), ("train", "PNEUMONIA", "b"), ("validation", "NORMAL", "c"),
                             ("test", "PNEUMONIA", "d")):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(film).save(root / split / cls / f"{name}.jpeg")
    vol, _ = synthetic_volume(np.random.default_rng(1), (16, 16, 4), False)
    write_ct_series(root / "test" / "NORMAL" / "series1", vol)
    res = run_cli("manifest", "build", str(root), "--label-folders", "--out", str(tmp_path / "m.csv"))
    assert res.returncode == 0, res.stderr
    assert "5 cases; labels NORMAL 3, PNEUMONIA 2; splits test 2, train 2, val 1" in res.stdout
    table = pd.read_csv(tmp_path / "m.csv", dtype=str).set_index("case_id")
    assert table[["label", "split"]].to_dict("index") == {
        "a": {"label": "NORMAL", "split": "train"}, "b": {"label": "PNEUMONIA", "split": "train"},
        "c": {"label": "NORMAL", "split": "val"}, "d": {"label": "PNEUMONIA", "split": "test"},
        "series1": {"label": "NORMAL", "split": "test"}}
    assert "split" not in build_manifest(root / "train", tmp_path / "t.csv", label_folders=True)
    with pytest.raises(ManifestError, match="lies in .*NORMAL itself; give the folder that holds the class folders"):
        build_manifest(root / "train" / "NORMAL", tmp_path / "n.csv", label_folders=True)
    Image.fromarray(film).save(root / "train" / "e.jpeg")
    with pytest.raises(ManifestError, match="case e lies in train/, a split folder"):
        build_manifest(root, tmp_path / "e.csv", label_folders=True)
    (tmp_path / "labels.csv").write_text("case_id,label\na,NORMAL\n")
    with pytest.raises(ManifestError, match="one source of labels"):
        build_manifest(root, tmp_path / "e.csv", labels=tmp_path / "labels.csv", label_folders=True)


def test_a_manifest_of_train_and_test_only_gets_validation_patients_from_training(tmp_path):
    """Public sets often ship train/ and test/ only; the temperature, the threshold and early stopping need
    validation cases, which come from whole training patients, never from the test split."""
    from medtl.config import load_config
    from medtl.train.data import prepare_cases

    table = make_table()
    table["split"] = split_manifest(table, 0.0, 0.2, seed=1)["split"]
    table.to_csv(tmp_path / "m.csv", index=False)
    manifest = read_manifest(tmp_path / "m.csv")
    data = load_config(None, ["data.classes=[neg,pos]"]).data
    prepared = prepare_cases(data, 0, manifest, tmp_path / "run", check=False)
    before, after = table.set_index("case_id")["split"], prepared.table.set_index("case_id")["split"]
    assert (after[before == "test"] == "test").all() and set(after[before == "train"]) == {"train", "val"}
    val = prepared.table[prepared.table["split"] == "val"]
    assert 0.1 < len(val) / (before == "train").sum() < 0.25 and set(val["label"]) == {"neg", "pos"}
    assert prepared.table.groupby("patient_id")["split"].nunique().max() == 1
    saved = pd.read_csv(tmp_path / "run" / "splits.csv", dtype=str).set_index("case_id")["split"]
    assert saved.to_dict() == after.to_dict()


def test_a_holdout_of_few_cases_per_class_is_a_named_problem_or_a_smaller_count_of_folds():
    from medtl.data.splits import validation_from_training

    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(12)], "patient_id": [f"p{i}" for i in range(12)],
                          "label": ["a", "b"] * 6, "split": "train"})
    assert (validation_from_training(table, 0.15)["split"] == "val").sum() == 2  # six a side: one fold in six
    assert split_manifest(table, 0.15, 0.15)["split"].value_counts().to_dict() == {"train": 8, "val": 2, "test": 2}
    with pytest.raises(ManifestError, match="too few for a 15% patient-level split"):
        validation_from_training(table.iloc[:2], 0.15)


@pytest.mark.parametrize("labels, level, positive", [(("abnormal", "normal"), "WARNING", "normal"),
                                                     (("neg", "pos"), "INFO", "pos")])
def test_classes_taken_from_the_manifest_say_which_is_positive(tmp_path, caplog, labels, level, positive):
    """Sorted, 'abnormal, normal' makes 'normal' the finding whose sensitivity is reported: said, and warned."""
    import logging

    from medtl.config import load_config
    from medtl.train.data import prepare_cases

    table = make_table()
    table["label"] = table["label"].map({"neg": labels[0], "pos": labels[1]})
    table.to_csv(tmp_path / "m.csv", index=False)
    caplog.set_level(logging.INFO, logger="medtl")
    prepare_cases(load_config(None).data, 0, read_manifest(tmp_path / "m.csv"), tmp_path / "run", check=False)
    [said] = [r for r in caplog.records if "positive class" in r.getMessage()]
    assert said.levelname == level and f"is {positive!r}" in said.getMessage()
    assert f"data.classes to [{positive}, {labels[0] if positive == labels[1] else labels[1]}]" in said.getMessage()


def test_evaluating_a_split_the_manifest_lacks_points_to_the_runs_own_splits(tmp_path):
    from medtl.evaluate.run import select_split

    table = make_table()
    table["split"] = split_manifest(table, 0.0, 0.2, seed=1)["split"]
    with pytest.raises(ManifestError, match="splits present: test, train; .* add --splits RUN/splits.csv"):
        select_split(table, "val")
    carved = split_manifest(table, 0.2, 0.2, seed=1)
    carved[["case_id", "split"]].to_csv(tmp_path / "splits.csv", index=False)
    assert len(select_split(table, "val", tmp_path / "splits.csv")) == (carved["split"] == "val").sum()


def test_build_records_each_films_view_for_sorting_and_subgroups(tmp_path):
    """A chest export mixes frontal and lateral films; the manifest names each film's view (a film in a folder of
    its own included) so a person can see and sort them, and ``data.subgroups: [view]`` can report by view."""
    from PIL import Image

    from medtl.data.synthetic import write_xray_dicom

    scans = tmp_path / "scans"
    film = np.arange(64.0).reshape(8, 8)
    write_xray_dicom(scans / "pa.dcm", film, view="PA")
    write_xray_dicom(scans / "lat" / "IM0001", film, view="LL")
    write_xray_dicom(scans / "untold.dcm", film, view="")
    Image.fromarray(film.astype(np.uint8)).save(scans / "photo.png")
    res = run_cli("manifest", "build", str(scans), "--out", str(tmp_path / "m.csv"))
    assert res.returncode == 0 and "views LL 1, PA 1" in res.stdout, res.stdout + res.stderr
    views = pd.read_csv(tmp_path / "m.csv").set_index("case_id")["view"]
    assert views[["lat", "pa"]].tolist() == ["LL", "PA"] and views[["photo", "untold"]].isna().all()
    write_ct_series(tmp_path / "ct" / "series", synthetic_volume(np.random.default_rng(0), (8, 8, 3), False)[0])
    assert "view" not in build_manifest(tmp_path / "ct", tmp_path / "ct.csv")  # no film, no column


def test_a_sheet_whose_spreadsheet_dropped_the_ids_leading_zeros_says_so(tmp_path, caplog):
    """Scans 007 and 012 labelled in a sheet where the ids became the numbers 7 and 12: no row joins, and the
    warning names the scan the id belonged to and the fix, rather than leaving every scan unlabelled unexplained."""
    import logging

    from PIL import Image

    (tmp_path / "scans").mkdir()
    for case in ("007", "012"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "scans" / f"{case}.png")
    pd.DataFrame({"case_id": [7, 12], "label": ["normal", "lesion"]}).to_csv(tmp_path / "labels.csv", index=False)
    caplog.set_level(logging.WARNING, logger="medtl")
    build_manifest(tmp_path / "scans", tmp_path / "m.csv", labels=tmp_path / "labels.csv")
    [said] = [r.getMessage() for r in caplog.records if "match no scan" in r.getMessage()]
    assert "(e.g. 12); scan '012' has this id with leading zeros" in said and "format the case_id column as Text" in said
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "scans" / "31.png")
    pd.DataFrame({"case_id": ["31.0"], "label": ["lesion"]}).to_csv(tmp_path / "labels.csv", index=False)
    caplog.clear()
    build_manifest(tmp_path / "scans", tmp_path / "m2.csv", labels=tmp_path / "labels.csv")
    [said] = [r.getMessage() for r in caplog.records if "match no scan" in r.getMessage()]
    assert "(e.g. 31.0); scan '31' has this id without the decimals" in said


@pytest.mark.parametrize("key, header", [("accession", "Accession Number"), ("patient_id", "patient_id")])
def test_a_sheet_keyed_by_accession_or_patient_labels_every_series_and_keeps_the_numbers_out(tmp_path, key, header):
    """A hospital's labels come keyed by the study's accession number or the patient's number, not by case ids
    that only exist once the manifest is built: each series takes its study's (or patient's) row, and neither
    number reaches the manifest or a message."""
    rng = np.random.default_rng(0)
    vol, _ = synthetic_volume(rng, (8, 8, 3), False)
    scans = tmp_path / "scans"
    for patient, series in (("P1", "s1"), ("P1", "s2"), ("P2", "s3"), ("P3", "s4")):
        write_ct_series(scans / series, vol, patient_tag=patient, seed=int(series[1]))
    tag = {"accession": "ACC", "patient_id": "ID"}[key]  # the synthetic tags: P1-ACC, P1-ID
    extra = {"patient_id": ["P1-ID", "P2-ID", "P9-ID"]} if key == "accession" else {"site": ["A", "B", "C"]}
    pd.DataFrame({header: [f"P1-{tag}", f"P2-{tag}", f"P9-{tag}"], "label": ["lesion", "normal", "normal"],
                  **extra}).to_csv(tmp_path / "labels.csv", index=False)
    res = run_cli("manifest", "build", str(scans), "--labels", str(tmp_path / "labels.csv"), "--out",
                  str(tmp_path / "m.csv"))
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "m.csv").set_index("case_id")
    assert table["label"].to_dict() == {"s1": "lesion", "s2": "lesion", "s3": "normal", "s4": table["label"]["s4"]}
    assert pd.isna(table["label"]["s4"]) and "1 of its rows match no scan" in " ".join(res.stderr.split())
    assert table.loc["s1", "patient_id"] == table.loc["s2", "patient_id"] != table.loc["s3", "patient_id"]
    written = (tmp_path / "m.csv").read_text() + res.stdout + res.stderr
    assert not any(number in written for number in ("P1-ACC", "P2-ACC", "P9-ACC", "P1-ID", "P2-ID", "P9-ID"))

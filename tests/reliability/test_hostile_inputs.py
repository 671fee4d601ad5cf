"""Hostile files and bad input: files medtl did not write are never touched, ids like ``nan`` are ids,
headers are claims checked before allocating, malformed DICOM numbers are per-case errors that echo
nothing, names are names, and a served model reads only under its data root."""

import gzip
import shutil
import struct

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from medtl.config import load_config
from medtl.data.synthetic import make_classification_set, synthetic_volume, write_ct_series, write_xray_dicom
from medtl.errors import ConfigError
from medtl.models.checkpoint import load_bundle, save_model
from medtl.steps import fit_model
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def model_2d(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("m2d")
    m = make_classification_set(tmp / "d", n=12, kind="png", size=(16, 16), split=True)  # both classes train
    cfg = load_config(None, [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[16,16]",
                             "model.pretrained=none", "transfer.strategy=scratch", "train.epochs=1",
                             "train.max_steps_per_epoch=1", f"train.out_dir={tmp / 'runs'}"])
    return fit_model(cfg).model_path, m


def score(model, manifest, out, *extra):
    return run_cli("score", "--model", str(model), "--manifest", str(manifest), "--out", str(out), "--no-track", *extra)


@pytest.mark.parametrize("content", [b"hello world, my notes", b"name,age\nalice,30\nbob,41", b"case_id,image\nx,y.png\n"])
def test_score_never_touches_an_out_file_it_did_not_write(tmp_path, model_2d, content):
    model, manifest = model_2d
    out = tmp_path / "notes.csv"
    out.write_bytes(content)
    res = score(model, manifest, out)
    assert res.returncode == 2 and "not a medtl predictions file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == content


def test_a_copy_of_the_manifest_as_out_is_refused_byte_for_byte(tmp_path, model_2d):
    model, manifest = model_2d
    out = tmp_path / "copy.csv"
    shutil.copy(manifest, out)
    before = out.read_bytes()
    assert score(model, manifest, out).returncode == 2
    assert out.read_bytes() == before


def test_case_ids_that_look_missing_are_scored_once(tmp_path, model_2d):
    model, manifest = model_2d
    shutil.copy(manifest.parent / pd.read_csv(manifest)["image"][0], tmp_path / "scan.png")
    ids = ["nan", "NA", "None", "null"]
    cases = tmp_path / "cases.csv"
    pd.DataFrame({"case_id": ids, "image": ["scan.png"] * 4}).to_csv(cases, index=False)
    out = tmp_path / "p.csv"
    assert score(model, cases, out).returncode == 0
    again = score(model, cases, out)
    assert again.returncode == 0
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sorted(table["case_id"]) == sorted(ids)


def test_rerun_with_another_model_is_refused_and_rows_name_their_model(tmp_path, model_2d):
    model, manifest = model_2d
    out = tmp_path / "p.csv"
    assert score(model, manifest, out).returncode == 0
    other = load_bundle(model)
    other.threshold = 0.123  # another operating point decides other labels: another model
    save_model(other, tmp_path / "other.pt")
    res = score(tmp_path / "other.pt", manifest, out)
    assert res.returncode == 2 and "another model" in res.stderr
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert table["model_id"].nunique() == 1 and len(table["model_id"][0]) == 16


def _nifti_bomb(path, shape=(30000, 30000, 1)):
    """A tiny gzip file whose header declares ``shape`` float32 voxels."""
    small = path.with_name("seed.nii")
    nib.save(nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4)), str(small))
    raw = bytearray(small.read_bytes())
    raw[40:48] = struct.pack("<4h", 3, *shape)
    path.write_bytes(gzip.compress(bytes(raw)))
    small.unlink()


@pytest.mark.parametrize("shape", [(30000, 30000, 1), (16000, 16000, 1)])
def test_a_header_bomb_is_a_per_case_problem_before_any_allocation(tmp_path, model_2d, shape):
    model, _ = model_2d
    _nifti_bomb(tmp_path / "bomb.nii.gz", shape)
    assert (tmp_path / "bomb.nii.gz").stat().st_size < 400
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"case_id": ["bomb"], "image": ["bomb.nii.gz"], "label": ["normal"]}).to_csv(manifest, index=False)
    res = run_cli("manifest", "check", str(manifest), "--deep")
    assert res.returncode == 1 and "header declares" in res.stdout + res.stderr
    out = tmp_path / "p.csv"
    assert score(model, manifest, out).returncode == 1  # exit 1: some cases failed
    row = pd.read_csv(out, dtype=str, keep_default_na=False).iloc[0]
    assert row["status"] == "error" and "header declares" in row["error"]


def _malformed_series(folder, keyword):
    vol, _ = synthetic_volume(np.random.default_rng(0), (16, 16, 4), False)
    write_ct_series(folder, vol, seed=1)
    path = sorted(folder.iterdir())[1]
    ds = pydicom.dcmread(path)
    tag = pydicom.tag.Tag(pydicom.datadict.tag_for_keyword(keyword))
    value = b"PHISENTINEL\\1\\2 " if keyword != "RescaleSlope" else b"PHISENTINEL "
    ds._dict[tag] = pydicom.dataelem.RawDataElement(tag, "DS", len(value), value, 0, False, True)  # as a bad writer would
    ds.save_as(path)
    return path


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "PixelSpacing", "RescaleSlope"])
def test_malformed_dicom_numbers_are_per_case_errors_that_echo_nothing(tmp_path, keyword):
    scans = tmp_path / "scans"
    bad = _malformed_series(scans / "bad", keyword)
    vol, _ = synthetic_volume(np.random.default_rng(1), (16, 16, 4), True)
    write_ct_series(scans / "good", vol, seed=2)
    built = run_cli("manifest", "build", str(scans), "--out", str(tmp_path / "m.csv"))
    assert built.returncode == 0, built.stderr
    table = pd.read_csv(tmp_path / "m.csv", dtype=str)
    assert sorted(table["case_id"]) == ["bad", "good"]
    check = run_cli("manifest", "check", str(tmp_path / "m.csv"), "--deep")
    printed = check.stdout + check.stderr
    assert check.returncode == 1 and bad.name in printed and keyword in printed
    assert "PHISENTINEL" not in printed and "unexpected error" not in printed
    m = make_classification_set(tmp_path / "d", n=12, kind="dicom", size=(16, 16, 4), split=True)  # both classes train
    cfg = load_config(None, [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.spatial_dims=3", "data.modality=ct",
                             "data.image_size=[16,16,8]", "model.backbone=resnet10", "model.pretrained=none",
                             "transfer.strategy=scratch", "train.epochs=1", "train.max_steps_per_epoch=1",
                             f"train.out_dir={tmp_path / 'runs'}"])
    model = fit_model(cfg).model_path
    res = run_cli("score", "--model", str(model), "--input", str(scans), "--out", str(tmp_path / "p.csv"), "--no-track")
    assert res.returncode == 1 and "PHISENTINEL" not in res.stdout + res.stderr
    out = pd.read_csv(tmp_path / "p.csv", dtype=str, keep_default_na=False).set_index("case_id")
    assert out.loc["good", "status"] == "ok" and out.loc["bad", "status"] == "error"
    assert keyword in out.loc["bad", "error"] and "PHISENTINEL" not in (tmp_path / "p.csv").read_text()


@pytest.mark.parametrize("syntax, said", [
    ("1.2.840.10008.1.2.4.90", "its JPEG 2000 Image Compression (Lossless Only) data do not decode: the file may be damaged"),
    ("1.2.840.10008.1.2.4.201", "no decoder for High-Throughput JPEG 2000 Image Compression (Lossless Only) is installed here: pylibjpeg"),
    ("1.2.3.4.999", "1.2.3.4.999 is a transfer syntax pydicom cannot decode: convert the series"),
])
def test_pixel_data_that_does_not_decode_says_which_compression_and_what_to_do(tmp_path, syntax, said):
    from pydicom.encaps import encapsulate

    from medtl.data.readers import load_scan
    from medtl.errors import DataError

    write_ct_series(tmp_path / "s", synthetic_volume(np.random.default_rng(0), (8, 8, 3), True)[0], seed=1)
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        ds.PixelData = encapsulate([b"\x00" * 64])
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(f)
    with pytest.raises(DataError, match="cannot decode pixel data") as info:
        load_scan(tmp_path / "s")
    assert said in str(info.value)


def test_unlabelled_rows_and_empty_manifests_fail_check_naming_the_cases(tmp_path):
    m = make_classification_set(tmp_path / "d", n=6, kind="png", size=(16, 16))
    table = pd.read_csv(m, dtype=str)
    table.loc[[1, 4], "label"] = ""
    table.to_csv(m, index=False)
    res = run_cli("manifest", "check", str(m))
    assert res.returncode == 1 and "no label" in res.stdout and "case001" in res.stdout and "case004" in res.stdout
    table.iloc[:0].to_csv(m, index=False)
    res = run_cli("manifest", "check", str(m))
    assert res.returncode == 1 and "no case" in res.stdout


@pytest.mark.parametrize("sep, encoding", [(";", "utf-8"), ("\t", "utf-8"), (",", "utf-16")])
def test_a_spreadsheet_export_that_is_not_comma_separated_utf8_is_one_line(tmp_path, sep, encoding):
    """Manifests and label sheets come out of Excel; a European export (';'), a tab-separated or a UTF-16 file is
    named with what to do, for the manifest and for the label sheet alike."""
    m = make_classification_set(tmp_path / "d", n=4, kind="png", size=(16, 16))
    table = pd.read_csv(m, dtype=str)
    odd = tmp_path / "odd.csv"
    table.to_csv(odd, index=False, sep=sep, encoding=encoding)
    said = "separated by" if sep != "," else "saved as UTF-16 (Excel's Unicode Text)"
    res = run_cli("manifest", "check", str(odd))
    assert res.returncode == 2 and said in res.stderr and "comma-separated UTF-8" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    table[["case_id", "label"]].to_csv(odd, index=False, sep=sep, encoding=encoding)
    res = run_cli("manifest", "build", str(tmp_path / "d"), "--out", str(tmp_path / "m.csv"), "--labels", str(odd))
    assert res.returncode == 2 and said in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_an_excel_label_sheet_is_read_as_written_and_an_ambiguous_workbook_is_refused(tmp_path):
    """Label sheets live in Excel. Its one sheet joins as its CSV export would (ids as text, spaces trimmed, the
    empty rows at its end dropped); a workbook with two filled sheets, an old .xls or a file that is no workbook
    is one line saying what to do, not a guess at which sheet holds the labels."""
    import datetime

    import openpyxl

    make_classification_set(tmp_path / "d", n=4, kind="png", size=(16, 16))
    book = openpyxl.Workbook()
    book.active.append(["case_id", " label ", "site"])
    for case, label, site in (("case000", "normal ", "A"), ("case001", "lesion", None), ("case003", "lesion", "B")):
        book.active.append([case, label, site])
    book.active.append([None, None, None])
    labels = tmp_path / "labels.xlsx"
    book.save(labels)
    out = tmp_path / "m.csv"
    res = run_cli("manifest", "build", str(tmp_path / "d"), "--out", str(out), "--labels", str(labels))
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(out, dtype=str).set_index("case_id")
    assert table["label"].fillna("").to_dict() == {"case000": "normal", "case001": "lesion", "case002": "", "case003": "lesion"}
    assert table["site"].fillna("").to_dict() == {"case000": "A", "case001": "", "case002": "", "case003": "B"}
    book.active.append([datetime.datetime(2026, 1, 2), "lesion", "C"])  # what Excel makes of an id typed 1-2
    book.save(labels)
    res = run_cli("manifest", "build", str(tmp_path / "d"), "--out", str(tmp_path / "m3.csv"), "--labels", str(labels))
    assert res.returncode == 0 and "(e.g. 2026-01-02 00:00:00); Excel reads ids like 1-2" in " ".join(res.stderr.split())
    book.create_sheet("notes").append(["case_id", "label"])
    book["notes"].append(["case002", "normal"])
    book.save(labels)
    old = tmp_path / "labels.xls"
    old.write_bytes(b"\xd0\xcf\x11\xe0")
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(b"\xd0\xcf\x11\xe0")  # an encrypted workbook is an OLE file, not a zip
    for sheet, said in ((labels, "2 sheets hold data ('Sheet', 'notes')"), (old, "save it as .xlsx"),
                        (broken, "not a readable .xlsx workbook")):
        res = run_cli("manifest", "build", str(tmp_path / "d"), "--out", str(tmp_path / "m2.csv"), "--labels", str(sheet))
        assert res.returncode == 2 and said in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    for args in (("build", str(tmp_path / "d")), ("split", str(out))):  # medtl writes CSV, whatever the name asks
        res = run_cli("manifest", *args, "--out", str(tmp_path / "new.xlsx"))
        assert res.returncode == 2 and "medtl writes manifests as CSV" in res.stderr and "new.csv" in res.stderr
        assert not (tmp_path / "new.xlsx").exists()


def test_a_sheet_with_a_title_above_its_header_is_read_from_the_header_down(tmp_path):
    """Sheets kept for people carry a title and a blank row above the header (CSV exports pad them with commas),
    and head their columns "Case ID" or "Label"; other columns keep their names."""
    import openpyxl

    from medtl.data.manifest import read_sheet

    book = openpyxl.Workbook()
    for row in (["Labels, reader 1, 2026"], [], ["case_id", "label", "site"], ["007", "lesion", "A"], ["b", "normal"]):
        book.active.append(row)
    book.save(tmp_path / "labels.xlsx")
    (tmp_path / "labels.csv").write_text("Labels reader 1,,\n,,\nCase ID,Label,site\n007,lesion,A\nb,normal,\n")
    for name in ("labels.xlsx", "labels.csv"):
        table = read_sheet(tmp_path / name)
        assert list(table.columns) == ["case_id", "label", "site"], name
        assert table.fillna("").values.tolist() == [["007", "lesion", "A"], ["b", "normal", ""]], name
    (tmp_path / "both.csv").write_text("case_id,Label,label,Site\na,x,y,s\n")  # a name taken is not doubled
    assert list(read_sheet(tmp_path / "both.csv").columns) == ["case_id", "Label", "label", "Site"]


@pytest.mark.parametrize("name", ["..", ".", "../elsewhere", "a/b", "", "-rf"])
def test_run_names_are_single_folder_names(name):
    with pytest.raises(ConfigError, match="name"):
        load_config(None, [f"name={name}"])


@pytest.mark.parametrize("size", ["[0,-32]", "[100000,100000]", "[1,64]"])
def test_image_sizes_must_be_plausible(size):
    with pytest.raises(ConfigError, match="image_size"):
        load_config(None, [f"data.image_size={size}"])


def test_a_served_model_reads_only_under_its_data_root(tmp_path, model_2d, monkeypatch):
    from medtl.mlflow_model import REFUSED, MedtlPyfunc

    model, manifest = model_2d
    root = tmp_path / "root"
    root.mkdir()
    inside = root / "scan.png"
    shutil.copy(manifest.parent / pd.read_csv(manifest)["image"][0], inside)
    (root / "escape.png").symlink_to(manifest.parent / pd.read_csv(manifest)["image"][1])
    monkeypatch.setenv("MEDTL_DATA_ROOT", str(root))
    served = MedtlPyfunc()
    served.bundle = load_bundle(model)
    asked = ["/etc/passwd", str(tmp_path / "missing.png"), str(root / "escape.png"), str(root / ".." / "x.png"), str(inside)]
    out = served.predict(None, pd.DataFrame({"image": asked}))
    assert list(out["error"][:4]) == [REFUSED] * 4  # the same answer whether a refused file exists or not
    assert out["status"][4] == "ok" and out["error"][4] == ""
    monkeypatch.delenv("MEDTL_DATA_ROOT")
    assert (served.predict(None, pd.DataFrame({"image": [str(inside)]}))["error"] == REFUSED).all()


def test_a_run_folder_as_model_means_its_model_pt(tmp_path, model_2d):
    model, manifest = model_2d
    res = score(model.parent, manifest, tmp_path / "p.csv")
    assert res.returncode == 0, res.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    res = score(empty, manifest, tmp_path / "q.csv")
    assert res.returncode == 2 and "model.pt" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = score(model, manifest, tmp_path / "s.csv", "--masks-out", str(tmp_path / "masks"))
    assert res.returncode == 2 and "only segmentation models write masks" in res.stderr
    assert not (tmp_path / "s.csv").exists()
    res = score(tmp_path / "gone", manifest, tmp_path / "r.csv")  # a mistyped folder is not an MLflow URI
    assert res.returncode == 2 and "gone: no such file or folder" in res.stderr and "MLflow" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = score(model.parent / "config.yaml", manifest, tmp_path / "t.csv")  # the run's config, not its model
    assert res.returncode == 2 and "a file but not a medtl model" in res.stderr and "MLmodel" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_evaluate_needs_a_label_on_every_case_and_says_so(tmp_path, model_2d):
    model, manifest = model_2d
    table = pd.read_csv(manifest, dtype=str)
    for name, part, said in (("nolabel", table.drop(columns="label"), "the manifest has no label column"),
                             ("gap", table.assign(label=table["label"].where(table.index != 2)),
                              f"case {table['case_id'][2]}: no label")):
        path = manifest.parent / f"{name}.csv"
        part.to_csv(path, index=False)
        res = run_cli("evaluate", "--model", str(model), "--manifest", str(path), "--out", str(tmp_path / name), "--split", "all")
        assert res.returncode == 2 and said in res.stderr and "KeyError" not in res.stderr, res.stderr


def test_evaluate_and_compare_write_only_into_folders_that_are_theirs(tmp_path, model_2d):
    model, manifest = model_2d
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("a researcher's own notes")
    res = run_cli("evaluate", "--model", str(model), "--manifest", str(manifest), "--out", str(mine), "--split", "all",
                  "--bootstrap", "20")
    assert res.returncode == 2 and "holds files medtl did not write (e.g. report.md)" in res.stderr
    assert (mine / "report.md").read_text() == "a researcher's own notes"  # was replaced by the evaluation's report
    for _ in range(2):  # its own folder it may write again
        res = run_cli("evaluate", "--model", str(model), "--manifest", str(manifest), "--out", str(tmp_path / "ev"),
                      "--split", "all", "--bootstrap", "20", "--no-figures")
        assert res.returncode == 0, res.stderr
    predictions = tmp_path / "ev" / "predictions.csv"
    res = run_cli("compare", str(predictions), str(predictions), "--out", str(mine))
    assert res.returncode == 2 and "holds files medtl did not write" in res.stderr


def test_evaluate_takes_the_runs_splits_for_a_manifest_without_them(tmp_path, model_2d):
    """The test cases of a manifest that has no split column are the training run's, never a fresh split's."""
    model, manifest = model_2d
    table = pd.read_csv(manifest, dtype=str)
    bare = manifest.parent / "bare_manifest.csv"
    table.drop(columns="split").to_csv(bare, index=False)
    (tmp_path / "splits.csv").write_text(table[["case_id", "split"]].to_csv(index=False))
    res = run_cli("evaluate", "--model", str(model), "--manifest", str(bare), "--out", str(tmp_path / "a"))
    assert res.returncode != 0 and "no split column" in res.stderr and "--splits" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run_cli("evaluate", "--model", str(model), "--manifest", str(bare), "--out", str(tmp_path / "b"),
                  "--splits", str(tmp_path / "splits.csv"), "--bootstrap", "20", "--no-figures")
    assert res.returncode == 0, res.stderr
    evaluated = pd.read_csv(tmp_path / "b" / "predictions.csv", dtype=str)["case_id"]
    assert sorted(evaluated) == sorted(table.loc[table["split"] == "test", "case_id"])
    res = run_cli("evaluate", "--model", str(model), "--manifest", str(bare), "--out", str(tmp_path / "c"),
                  "--splits", str(bare))
    assert res.returncode != 0 and "needs the columns case_id and split" in res.stderr


def test_a_training_split_of_one_class_is_refused_before_the_split_is_saved(tmp_path):
    m = make_classification_set(tmp_path / "d", n=40, kind="png", size=(16, 16))
    pd.read_csv(m, dtype=str).assign(label="normal").to_csv(m, index=False)
    res = run_cli("train", "--set", f"data.manifest={m}", "--set", "data.image_size=[16,16]", "--set",
                  f"train.out_dir={tmp_path / 'runs'}", "--set", "name=one", "--set", "tracking.enabled=false")
    assert res.returncode == 2 and "holds normal cases only" in res.stderr and "two classes" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "one" / "splits.csv").exists()  # relabelled cases will get a stratified split


def test_spaces_a_spreadsheet_leaves_around_names_and_labels_are_trimmed(tmp_path):
    """'002 ' is case 002, ' label' the label column and 'lesion ' the class lesion, not a third class."""
    m = make_classification_set(tmp_path / "d", n=4, kind="png", size=(16, 16))
    table = pd.read_csv(m, dtype=str)
    sheet = tmp_path / "labels.csv"
    sheet.write_text("case_id, label \n" + "".join(f" {c} ,{lab}  \n" for c, lab in zip(table.case_id, table.label)))
    built = tmp_path / "m.csv"
    res = run_cli("manifest", "build", str(tmp_path / "d"), "--out", str(built), "--labels", str(sheet))
    assert res.returncode == 0, res.stderr
    got = pd.read_csv(built, dtype=str).set_index("case_id")["label"]
    assert got.to_dict() == dict(zip(table.case_id, table.label))
    blank = tmp_path / "blank.csv"
    blank.write_text("case_id,image,label\n" + "".join(f"{c},{i},   \n" for c, i in zip(table.case_id, table.image)))
    (tmp_path / "d" / "blank.csv").write_text(blank.read_text())
    res = run_cli("manifest", "check", str(tmp_path / "d" / "blank.csv"))
    assert res.returncode == 1 and "no label" in res.stdout  # a cell of spaces is an empty cell
    trailing = tmp_path / "d" / "trailing.csv"
    trailing.write_text(m.read_text() + ("," * (len(table.columns) - 1) + "\r\n") * 2)  # Excel's empty last rows
    res = run_cli("manifest", "check", str(trailing))
    assert res.returncode == 0 and f"{len(table)} cases, no problem found" in res.stdout, res.stdout + res.stderr
    assert "in the headers; --deep also reads every voxel" in res.stdout  # not read as a promise about the voxels


def test_a_model_saved_by_another_version_loads_or_says_which_saved_key_it_cannot_take(tmp_path, model_2d):
    """A key the saved spec holds that this medtl lacks made a registered model unloadable (a pydantic
    'Extra inputs are not permitted' traceback after an upgrade)."""
    import torch

    model, manifest = model_2d
    payload = torch.load(model, weights_only=True)
    payload["inference"]["data"]["a_future_key"] = 1
    payload["medtl_version"] = "9.9.9"
    torch.save(payload, tmp_path / "newer.pt")
    res = score(tmp_path / "newer.pt", manifest, tmp_path / "p.csv")
    assert res.returncode == 0 and "data.a_future_key unknown to medtl" in res.stderr and "9.9.9" in res.stderr, res.stderr
    del payload["inference"]["data"]["a_future_key"]
    payload["inference"]["data"]["image_size"] = [0, 16]
    torch.save(payload, tmp_path / "odd.pt")
    res = score(tmp_path / "odd.pt", manifest, tmp_path / "q.csv")
    assert res.returncode == 2 and "odd.pt: its saved data does not validate" in res.stderr and "medtl 9.9.9" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_evaluating_labels_the_model_does_not_know_names_a_case_and_the_count(tmp_path, model_2d):
    model, manifest = model_2d
    table = pd.read_csv(manifest, dtype=str)
    table["label"] = table["label"].map({"normal": "0", "lesion": "1"})
    table.to_csv(manifest.parent / "numbers.csv", index=False)
    res = run_cli("evaluate", "--model", str(model), "--manifest", str(manifest.parent / "numbers.csv"), "--split", "all",
                  "--out", str(tmp_path / "ev"))
    first = table.loc[table["label"] == "0", "case_id"].iloc[0]
    assert res.returncode == 2 and f"case {first}: label '0' ({(table['label'] == '0').sum()} case(s) in all)" in res.stderr
    assert "normal, lesion" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_scan_of_another_modality_is_the_case_error_not_a_confident_answer(tmp_path, model_2d):
    """An MR film through a radiograph model's intensity preset would still get probabilities; the DICOM Modality
    says it does not belong. Modalities medtl has no preset for (OT, a secondary capture) are not judged."""
    model, _ = model_2d
    film = np.random.default_rng(0).random((16, 16)) * 1000
    for name, modality in (("dx", "DX"), ("mr", "MR"), ("ot", "OT")):
        write_xray_dicom(tmp_path / "in" / f"{name}.dcm", film)
        ds = pydicom.dcmread(tmp_path / "in" / f"{name}.dcm")
        ds.Modality = modality
        ds.save_as(tmp_path / "in" / f"{name}.dcm")
    res = run_cli("score", "--model", str(model), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "p.csv"), "--no-track")
    out = pd.read_csv(tmp_path / "p.csv", dtype=str, keep_default_na=False).set_index("case_id")
    assert res.returncode == 1 and list(out.loc[["dx", "mr", "ot"], "status"]) == ["ok", "error", "ok"]
    assert "DICOM Modality MR (mr) under data.modality xray" in out.loc["mr", "error"]


def test_a_zipped_export_a_research_format_or_a_sheet_given_as_input_says_what_to_do(tmp_path, model_2d):
    """PACS and data-sharing exports often arrive zipped: "no file found" sent people looking at the wrong folder."""
    import zipfile

    from medtl.data.build import build_manifest
    from medtl.data.check import check_manifest
    from medtl.data.manifest import read_manifest
    from medtl.errors import ManifestError

    export = tmp_path / "export"
    export.mkdir()
    with zipfile.ZipFile(export / "study.zip", "w") as z:
        z.writestr("IM0001.dcm", b"DICM")
    res = run_cli("score", "--model", str(model_2d[0]), "--input", str(export), "--out", str(tmp_path / "p.csv"),
                  "--no-track")
    assert res.returncode != 0 and "it holds 1 archive(s) (study.zip): unpack them" in res.stderr
    with pytest.raises(ManifestError, match=r"it holds 1 archive\(s\) \(study.zip\)"):
        build_manifest(export, tmp_path / "m.csv")
    pd.DataFrame({"case_id": ["a"], "image": ["export/study.zip"]}).to_csv(tmp_path / "m.csv", index=False)
    problem, = check_manifest(read_manifest(tmp_path / "m.csv"))
    assert problem.case_id == "a" and "study.zip: an archive, not a scan; unpack it" in problem.detail
    research = tmp_path / "subjects"  # a research set in Analyze, NIfTI's forerunner, which states no orientation
    research.mkdir()
    (research / "T1.hdr").write_bytes(bytes(348))
    with pytest.raises(ManifestError, match=r"1 Analyze file\(s\) \(T1.hdr\), which medtl does not read: convert"):
        build_manifest(research, tmp_path / "m2.csv")
    pd.DataFrame({"case_id": ["b"], "image": ["subjects/T1.hdr"]}).to_csv(tmp_path / "m.csv", index=False)
    problem, = check_manifest(read_manifest(tmp_path / "m.csv"))
    assert "T1.hdr: in Analyze format, which medtl does not read; convert it to NIfTI" in problem.detail
    res = run_cli("score", "--model", str(model_2d[0]), "--input", str(tmp_path / "m.csv"), "--out",
                  str(tmp_path / "p.csv"), "--no-track")  # was scored as a scan: one error row, "not a DICOM..."
    assert res.returncode == 2 and f"a sheet, not a scan; a manifest is given as --manifest {tmp_path / 'm.csv'}" \
        in res.stderr and not (tmp_path / "p.csv").exists(), res.stderr


def test_a_scan_named_in_an_older_encoding_is_one_line_that_says_how_to_rename(tmp_path, model_2d):
    """A Latin-1 name from a Windows share ("Müller") reached the manifest writer as undecodable bytes: an unexpected
    UnicodeEncodeError after every header was read."""
    import os

    scans = tmp_path / "scans"
    make_classification_set(scans, n=4, kind="png", size=(16, 16))
    first = sorted((scans / "images").glob("*.png"))[0]
    first.rename(scans / "images" / os.fsdecode(b"M\xfcller.png"))  # the bytes a Latin-1 system wrote
    said = (f"error: {scans}: 1 scan(s) named in an encoding other than UTF-8 (an older Windows or share's; the first: "
            rf"images/M\xfcller.png); rename them to UTF-8, for instance with convmv -f latin1 -t utf8 -r --notest "
            f"{scans}, and run again")
    res = run_cli("manifest", "build", str(scans), "--out", str(tmp_path / "m.csv"))
    assert res.returncode == 2 and res.stderr.strip() == said, res.stderr
    assert not (tmp_path / "m.csv").exists()
    res = run_cli("score", "--model", str(model_2d[0]), "--input", str(scans), "--out", str(tmp_path / "p.csv"),
                  "--no-track")
    assert res.returncode == 2 and res.stderr.strip() == said, res.stderr

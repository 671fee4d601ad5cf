"""``manifest check`` finds each problem on purpose-made bad files, by case id, without a traceback."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtl.data.check import check_manifest
from medtl.data.manifest import class_names, read_manifest
from medtl.data.synthetic import make_classification_set, synthetic_volume, write_ct_series, write_nifti, write_xray_dicom
from medtl.errors import ManifestError
from tests.conftest import run_cli


@pytest.fixture()
def bad_manifest(tmp_path):
    rng = np.random.default_rng(0)
    vol, mask = synthetic_volume(rng, (16, 16, 8), True)
    rows = []

    def add(case, image, split="train", patient=None, **extra):
        rows.append({"case_id": case, "patient_id": patient or case, "image": image, "label": "lesion", "split": split, **extra})

    write_nifti(tmp_path / "good.nii.gz", vol)
    write_nifti(tmp_path / "good_mask.nii.gz", mask)
    add("good", "good.nii.gz", mask="good_mask.nii.gz")
    (tmp_path / "empty.dcm").write_bytes(b"")
    add("empty", "empty.dcm")
    write_xray_dicom(tmp_path / "xr.dcm", np.full((16, 16), 500.0))
    data = (tmp_path / "xr.dcm").read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) - 200])
    add("truncated", "trunc.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"GIF89a not a dicom" * 20)
    add("junk", "junk.dcm")
    nan = vol.copy()
    nan[2, 2, 2] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", nan)
    add("nan", "nan.nii.gz")
    write_nifti(tmp_path / "five.nii.gz", np.zeros((4, 4, 4, 2, 2), np.float32))
    add("fived", "five.nii.gz")
    write_ct_series(tmp_path / "gap", vol, skip_slices=[4])
    add("gap", "gap")
    write_nifti(tmp_path / "small_mask.nii.gz", np.zeros((8, 8, 8), np.uint8))
    add("badmask", "good.nii.gz", mask="small_mask.nii.gz")
    add("leak1", "good.nii.gz", split="train", patient="P9")
    add("leak2", "good.nii.gz", split="test", patient="P9")
    add("missing", "not_there.nii.gz")
    add("good", "good.nii.gz")  # duplicate id
    add("blankfilm", "xr.dcm")  # every pixel 500: an export that lost its image
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "black.png")
    add("blankpng", "black.png")
    write_nifti(tmp_path / "healthy.nii.gz", vol + 1)
    write_nifti(tmp_path / "no_lesion.nii.gz", np.zeros_like(mask))
    add("healthy", "healthy.nii.gz", mask="no_lesion.nii.gz")  # an empty mask is a case without a lesion, not a problem
    write_nifti(tmp_path / "phase.nii.gz", vol.astype(np.complex64))  # MR phase data: float would keep its real part
    add("complex", "phase.nii.gz")
    header = nib.Nifti1Header()  # every slice at one depth: no RAS reorientation
    header.set_data_shape(vol.shape)
    header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    nib.Nifti1Image(vol, None, header).to_filename(tmp_path / "flat.nii.gz")
    add("flat", "flat.nii.gz")
    add("noimage", None, mask="good_mask.nii.gz")
    add("nomask", "healthy.nii.gz", mask=None, label=None)
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


EXPECTED = {
    "empty": "empty file",
    "truncated": "truncated DICOM",
    "junk": "not a readable DICOM",
    "nan": "NaN/Inf",
    "fived": "unexpected dimensionality",
    "gap": "missing slice",
    "badmask": "mask shape mismatch",
    "leak1": "patient in two splits",
    "leak2": "patient in two splits",
    "missing": "missing file",
    "good": "duplicate case_id",
    "blankfilm": "blank",
    "blankpng": "blank",
    "noimage": "no image",
    "nomask": "no mask",
    "complex": "complex-valued",
    "flat": "voxel size of 0",
}


def test_check_finds_every_planted_problem(bad_manifest):
    problems = check_manifest(read_manifest(bad_manifest), classes=["normal", "lesion"], deep=True)
    found = {(p.case_id, p.kind) for p in problems}
    for case, kind in EXPECTED.items():
        assert (case, kind) in found, (case, kind, sorted(found))
    flagged = {p.case_id for p in problems}
    assert flagged == set(EXPECTED)


def test_header_only_check_misses_nan_but_not_structure(bad_manifest):
    problems = check_manifest(read_manifest(bad_manifest), deep=False)
    kinds = {p.case_id: p.kind for p in problems}
    assert "nan" not in kinds and "blankfilm" not in kinds
    assert kinds["gap"] == "missing slice"


def test_clean_manifest_has_no_problem_and_label_outside_classes_is_found(tmp_path):
    rng = np.random.default_rng(1)
    vol, _ = synthetic_volume(rng, (8, 8, 4), False)
    write_nifti(tmp_path / "a.nii.gz", vol)
    pd.DataFrame([{"case_id": "a", "image": "a.nii.gz", "label": "cat"}]).to_csv(tmp_path / "m.csv", index=False)
    m = read_manifest(tmp_path / "m.csv")
    assert check_manifest(m, spatial_dims=3, deep=True) == []
    problems = check_manifest(m, classes=["normal", "lesion"], spatial_dims=2)
    assert {p.kind for p in problems} == {"unknown label", "unexpected dimensionality"}


def test_a_scan_listed_twice_is_found_by_file_and_with_deep_by_content(tmp_path):
    """PneumoniaMNIST itself holds 8 validation films pixel-identical to training films (README, Data handling)."""
    import shutil

    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        write_nifti(tmp_path / f"{name}.nii.gz", synthetic_volume(rng, (8, 8, 4), False)[0])
    shutil.copy(tmp_path / "a.nii.gz", tmp_path / "a_copy.nii.gz")
    rows = [("a", "a.nii.gz", "train"), ("b", "b.nii.gz", "train"), ("again", "a.nii.gz", "test"), ("copy", "a_copy.nii.gz", "val")]
    pd.DataFrame([{"case_id": c, "image": i, "label": "normal", "split": s} for c, i, s in rows]).to_csv(tmp_path / "m.csv", index=False)
    m = read_manifest(tmp_path / "m.csv")
    shallow = [(p.case_id, p.kind, p.detail) for p in check_manifest(m, spatial_dims=3)]
    assert shallow == [("again", "duplicate image", "same file as case a (train and test); list each scan once, under one case")]
    deep = {p.case_id: p.detail for p in check_manifest(m, spatial_dims=3, deep=True)}
    assert set(deep) == {"again", "copy"} and deep["copy"].startswith("same content as case a (train and val)")


def test_cli_check_lists_cases_and_exits_nonzero_without_traceback(bad_manifest):
    res = run_cli("manifest", "check", str(bad_manifest), "--deep")
    assert res.returncode == 1
    assert "Traceback" not in res.stdout + res.stderr
    for case in EXPECTED:
        assert case in res.stdout


def test_paths_escaping_the_manifest_are_refused_unless_data_root(tmp_path):
    (tmp_path / "sub").mkdir()
    write_nifti(tmp_path / "outside.nii.gz", np.zeros((4, 4, 4), np.float32))
    pd.DataFrame([{"case_id": "a", "image": "../outside.nii.gz"}]).to_csv(tmp_path / "sub" / "m.csv", index=False)
    with pytest.raises(ManifestError, match="case a.*outside the manifest"):
        read_manifest(tmp_path / "sub" / "m.csv")
    m = read_manifest(tmp_path / "sub" / "m.csv", data_root=tmp_path)
    assert m.table["image_path"][0] == str((tmp_path / "outside.nii.gz").resolve())


def test_manifest_check_lists_every_escaping_path_and_goes_on(tmp_path):
    from tests.conftest import run_cli

    (tmp_path / "sub").mkdir()
    write_nifti(tmp_path / "sub" / "ok.nii.gz", np.zeros((4, 4, 4), np.float32))
    pd.DataFrame([{"case_id": "a", "image": "../x.nii.gz"}, {"case_id": "b", "image": "ok.nii.gz"},
                  {"case_id": "c", "image": "/etc/passwd"}]).to_csv(tmp_path / "sub" / "m.csv", index=False)
    res = run_cli("manifest", "check", str(tmp_path / "sub" / "m.csv"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "2 problem(s) in 2 of 3 cases" in res.stdout  # a and c listed, b checked
    assert "../x.nii.gz" in res.stdout and "/etc/passwd" in res.stdout


def test_manifest_schema_errors(tmp_path):
    (tmp_path / "m.csv").write_text("case,image\na,b\n")
    with pytest.raises(ManifestError, match="case_id"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("case_id,image,split\na,b,development\n")
    with pytest.raises(ManifestError, match="case a.*development"):
        read_manifest(tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "scans").mkdir()  # a folder named where its manifest belongs: the manifest inside, or how to build one
    with pytest.raises(ManifestError, match=r"scans: a folder, not a manifest; build a manifest of its scans with `medtl manifest build"):
        read_manifest(tmp_path / "scans")
    (tmp_path / "scans" / "manifest.csv").write_text("case_id,image\na,b\n")
    with pytest.raises(ManifestError, match=r"a folder, not a manifest; give the manifest inside it \(.*scans/manifest.csv\)"):
        read_manifest(tmp_path / "scans")
    import nibabel as nib

    scan = np.random.default_rng(0).normal(size=(8, 8, 4)).astype(np.float32)  # a scan where its manifest belongs
    nib.save(nib.Nifti1Image(scan, np.eye(4)), tmp_path / "scans" / "a.nii.gz")
    with pytest.raises(ManifestError, match=r"a.nii.gz: a binary file \(a scan\?\), not a sheet; give the CSV or .xlsx"):
        read_manifest(tmp_path / "scans" / "a.nii.gz")


def test_a_film_in_a_folder_of_its_own_is_checked_like_the_file(tmp_path):
    """One DX file per folder is how many exports write radiographs; it has no orientation to build an affine from."""
    write_xray_dicom(tmp_path / "f1" / "IM0001", np.random.default_rng(0).uniform(0, 1000, (20, 16)))
    pd.DataFrame([{"case_id": "f1", "image": "f1", "label": "normal"}]).to_csv(tmp_path / "m.csv", index=False)
    m = read_manifest(tmp_path / "m.csv")
    for deep in (False, True):
        assert check_manifest(m, classes=["normal", "lesion"], spatial_dims=2, deep=deep) == []


def test_a_file_of_several_volumes_says_to_split_it_and_a_trailing_axis_of_one_is_one_volume(tmp_path):
    """Converters write DWI echoes or b-values as one 4-D NIfTI, and some write a single volume as (x, y, z, 1)."""
    rng = np.random.default_rng(2)
    vol, _ = synthetic_volume(rng, (8, 8, 4), False)
    write_nifti(tmp_path / "echoes.nii.gz", np.stack([vol] * 3, axis=-1))
    write_nifti(tmp_path / "one.nii.gz", vol[..., None])
    pd.DataFrame([{"case_id": "echoes", "image": "echoes.nii.gz"}, {"case_id": "one", "image": "one.nii.gz"}]).to_csv(
        tmp_path / "m.csv", index=False)
    problems = check_manifest(read_manifest(tmp_path / "m.csv"), spatial_dims=3)
    assert [(p.case_id, p.kind) for p in problems] == [("echoes", "unexpected dimensionality")]
    assert "3 volumes in one file" in problems[0].detail and "own file" in problems[0].detail


@pytest.mark.parametrize("modality, flagged", [("ct", {"film"}), ("xray", {"series"}), ("none", set()), (None, set())])
def test_a_dicom_scan_of_another_modality_than_configured_is_a_problem(tmp_path, modality, flagged):
    """A CT window on a radiograph (or percentiles on HU) gives the model an image it never saw the like of."""
    rng = np.random.default_rng(3)
    vol, _ = synthetic_volume(rng, (16, 16, 4), False)
    write_ct_series(tmp_path / "series", vol)
    write_xray_dicom(tmp_path / "film.dcm", rng.random((16, 16)) * 1000)
    pd.DataFrame([{"case_id": "series", "image": "series"}, {"case_id": "film", "image": "film.dcm"}]).to_csv(
        tmp_path / "m.csv", index=False)
    problems = check_manifest(read_manifest(tmp_path / "m.csv"), modality=modality)
    assert {p.case_id for p in problems} == flagged and all(p.kind == "other modality" for p in problems)


def test_a_label_that_looks_like_a_class_index_or_in_other_capitals_says_how_to_name_it(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", np.ones((8, 8, 4), np.float32))
    pd.DataFrame([{"case_id": "a", "image": "a.nii.gz", "label": "1"}, {"case_id": "b", "image": "a.nii.gz", "label": "Lesion"}]
                 ).to_csv(tmp_path / "m.csv", index=False)
    index, capitals = [p for p in check_manifest(read_manifest(tmp_path / "m.csv"), classes=["normal", "lesion"])
                       if p.kind == "unknown label"]
    assert index.case_id == "a" and "set data.classes to [0, 1]" in index.detail
    assert capitals.case_id == "b" and "write 'lesion'" in capitals.detail
    pd.DataFrame([{"case_id": "a", "image": "a.nii.gz", "label": "1.0"}]).to_csv(tmp_path / "m.csv", index=False)
    saved_as_float, = check_manifest(read_manifest(tmp_path / "m.csv"), classes=["0", "1"])
    assert "write '1'" in saved_as_float.detail


def test_labels_that_differ_only_in_spelling_are_not_taken_as_two_classes(tmp_path):
    """With no config naming the classes, ``Lesion`` next to ``lesion`` (or ``1.0`` next to ``1``) would train a
    class of its own; check names the rarer spelling's cases and training refuses."""
    write_nifti(tmp_path / "a.nii.gz", np.ones((8, 8, 4), np.float32))
    labels = {"a": "lesion", "b": "lesion", "c": "Lesion ", "d": "normal", "e": "1", "f": "1.0", "g": "1"}
    pd.DataFrame([{"case_id": c, "image": "a.nii.gz", "label": v} for c, v in labels.items()]).to_csv(
        tmp_path / "m.csv", index=False)
    m = read_manifest(tmp_path / "m.csv")
    problems = [p for p in check_manifest(m) if p.kind != "duplicate image"]
    assert [(p.case_id, p.kind) for p in problems] == [("c", "label spelling"), ("f", "label spelling")]
    assert "write 'lesion'" in problems[0].detail and "write '1'" in problems[1].detail
    with pytest.raises(ManifestError, match="look like one class spelt two ways"):
        class_names(m, None)
    assert class_names(m, ["lesion", "Lesion", "normal", "1", "1.0"]) == ["lesion", "Lesion", "normal", "1", "1.0"]


def test_a_rare_label_a_typing_slip_from_a_common_one_is_a_misspelling_not_a_class(tmp_path):
    """``pneumonai`` once beside ``pneumonia`` 29 times trained a third class without a word; labels that differ
    in their digits, or a class as common as the other, stay classes."""
    write_nifti(tmp_path / "a.nii.gz", np.ones((8, 8, 4), np.float32))
    labels = ["normal"] * 30 + ["pneumonia"] * 29 + ["pneumonai", "nromal"] + ["grade 1"] * 20 + ["grade 2"]
    labels += ["effusion"] * 10 + ["efusion"] * 2  # a class of its own only 5 times rarer: not called a slip
    pd.DataFrame({"case_id": [f"c{i}" for i in range(len(labels))], "image": "a.nii.gz", "label": labels}).to_csv(
        tmp_path / "m.csv", index=False)
    m = read_manifest(tmp_path / "m.csv")
    problems = [p for p in check_manifest(m) if p.kind == "label spelling"]
    assert [p.case_id for p in problems] == ["c59", "c60"]
    assert "'pneumonia', which 29 other cases use" in problems[0].detail and "write 'normal'" in problems[1].detail
    with pytest.raises(ManifestError, match="'pneumonia' and 'pneumonai' look like one class spelt two ways"):
        class_names(m, None)
    named = {p.case_id: p.detail for p in check_manifest(m, classes=["normal", "pneumonia"]) if p.kind == "unknown label"}
    assert "(misspelt? write 'pneumonia')" in named["c59"] and "misspelt" not in named["c61"]  # grade 1


def test_a_label_column_of_free_text_is_named_before_it_trains_a_class_per_case(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", np.ones((8, 8, 4), np.float32))
    labels = [f"RLL opacity, report {i}" for i in range(40)] + ["normal"] * 5
    pd.DataFrame({"case_id": [f"c{i}" for i in range(len(labels))], "image": "a.nii.gz", "label": labels}).to_csv(
        tmp_path / "m.csv", index=False)
    m = read_manifest(tmp_path / "m.csv")
    column, = [p for p in check_manifest(m) if p.kind.startswith("label")]
    assert column.kind == "label column" and "41 different labels, 40 of them on one case only" in column.detail
    with pytest.raises(ManifestError, match="looks like free text or identifiers"):
        class_names(m, None)
    assert not [p for p in check_manifest(m, classes=["normal", "effusion"]) if p.kind == "label column"]


def test_a_sheet_of_several_findings_per_case_is_named_and_one_finding_makes_a_manifest_of_its_own(tmp_path):
    """ChestX-ray14 writes ``Effusion|Infiltration``: read as it is, each combination trained as a class of its own
    (a dozen combinations, most on one case, were called free text). ``medtl manifest finding`` writes one finding,
    present or absent, with the files still found from the new manifest's folder."""
    (tmp_path / "d").mkdir()
    write_nifti(tmp_path / "d" / "a.nii.gz", np.ones((8, 8, 4), np.float32))
    combos = [f"Effusion|{other}" for other in ("Mass", "Nodule", "Atelectasis", "Edema", "Hernia", "Fibrosis")]
    labels = ["No Finding"] * 20 + ["Effusion"] * 8 + ["Mass", "Nodule"] * 3 + combos + ["Mass;Nodule", None]
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(len(labels))], "image": "a.nii.gz", "label": labels})
    table.to_csv(tmp_path / "d" / "m.csv", index=False)
    m = read_manifest(tmp_path / "d" / "m.csv")
    column, = [p for p in check_manifest(m) if p.kind.startswith("label")]
    assert "7 cases' labels join several findings ('Effusion|" in column.detail, column.detail
    assert f"medtl manifest finding {m.path} Effusion --out {m.path.with_name('effusion.csv')}" in column.detail
    with pytest.raises(ManifestError, match="join several findings"):
        class_names(m, None)
    (tmp_path / "films").mkdir()  # the same sheet joined to films by manifest build: said there, first
    for case in table["case_id"]:
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "films" / f"{case}.png")
    table[["case_id", "label"]].to_csv(tmp_path / "sheet.csv", index=False)
    built = run_cli("manifest", "build", str(tmp_path / "films"), "--labels", str(tmp_path / "sheet.csv"), "--out",
                    str(tmp_path / "built.csv"))
    assert built.returncode == 0 and "7 cases' labels join several findings" in built.stderr, built.stderr
    assert "medtl manifest finding" in " ".join(built.stderr.split())  # the log wraps the line at 80 columns
    res = run_cli("manifest", "finding", str(tmp_path / "d" / "m.csv"), "Effusion", "--out", str(tmp_path / "e.csv"))
    assert res.returncode == 0 and "e.csv: 42 cases; Effusion_absent 27, Effusion_present 14" in res.stdout, res.stderr
    one = read_manifest(tmp_path / "e.csv")
    want = [None if v is None else "Effusion_present" if "Effusion" in v else "Effusion_absent" for v in labels]
    assert [None if pd.isna(v) else v for v in one.table["label"]] == want
    assert set(one.table["image"]) == {"d/a.nii.gz"} and "split" not in pd.read_csv(tmp_path / "e.csv")
    assert class_names(one, None) == ["Effusion_absent", "Effusion_present"]  # the finding is the positive class
    assert not [p for p in check_manifest(one) if p.kind.startswith("label")]
    for finding, said in (("effusion", "write 'Effusion'"), ("Pneumonia", "its findings: Atelectasis, Edema")):
        res = run_cli("manifest", "finding", str(tmp_path / "d" / "m.csv"), finding, "--out", str(tmp_path / "x.csv"))
        assert res.returncode == 2 and said in res.stderr and not (tmp_path / "x.csv").exists(), res.stderr
    before = (tmp_path / "d" / "m.csv").read_bytes()
    res = run_cli("manifest", "finding", str(tmp_path / "d" / "m.csv"), "Effusion", "--out", str(tmp_path / "d" / "m.csv"))
    assert res.returncode == 2 and "that is the manifest the finding is taken from" in res.stderr
    assert (tmp_path / "d" / "m.csv").read_bytes() == before  # the sheet of every finding is kept
    plain = pd.DataFrame({"case_id": ["a", "b", "c"], "image": "d/a.nii.gz", "label": ["left|upper", "right|lower", "no"]})
    plain.to_csv(tmp_path / "p.csv", index=False)  # class names that hold a bar, no part of them recurring: classes
    assert not [p for p in check_manifest(read_manifest(tmp_path / "p.csv")) if p.kind == "label column"]


def test_chexperts_uncertain_minus_one_beside_0_and_1_is_named_before_it_trains_a_third_class(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", np.ones((8, 8, 4), np.float32))
    labels = ["1.0"] * 10 + ["0.0"] * 12 + ["-1.0"] * 3 + [None]
    pd.DataFrame({"case_id": [f"c{i}" for i in range(len(labels))], "image": "a.nii.gz", "label": labels}).to_csv(
        tmp_path / "m.csv", index=False)
    m = read_manifest(tmp_path / "m.csv")
    column, = [p for p in check_manifest(m) if p.kind.startswith("label")]
    assert "3 cases labelled -1 beside 0 and 1" in column.detail and "U-Ones or U-Zeros" in column.detail
    with pytest.raises(ManifestError, match="labelled -1 beside 0 and 1"):
        class_names(m, None)
    assert class_names(m, ["-1.0", "0.0", "1.0"]) == ["-1.0", "0.0", "1.0"]  # a class of its own where the config says so
    pd.DataFrame({"case_id": ["a", "b", "c"], "image": "a.nii.gz", "label": ["-1", "0", "2"]}).to_csv(
        tmp_path / "grades.csv", index=False)  # other integer classes: not CheXpert's marks
    assert class_names(read_manifest(tmp_path / "grades.csv"), None) == ["-1", "0", "2"]


def test_a_manifest_written_on_windows_reads_here(tmp_path):
    """Backslash separators are what Excel on Windows writes; a drive letter cannot be found here and says so."""
    make_classification_set(tmp_path, n=3, kind="png", size=(16, 16))
    table = pd.read_csv(tmp_path / "manifest.csv", dtype=str)
    table["image"] = table["image"].str.replace("/", "\\")
    table.loc[2, "image"] = "C:\\Users\\me\\scans\\case002.png"
    table.to_csv(tmp_path / "manifest.csv", index=False)
    m = read_manifest(tmp_path / "manifest.csv", keep_going=True)
    assert m.table["image_path"][0] == str(tmp_path / "images" / "case000.png")
    problems = check_manifest(m)
    assert [(p.case_id, p.kind) for p in problems] == [("case002", "Windows drive path")]
    assert "relative to the manifest" in problems[0].detail
    table.loc[2, "image"] = "s3://archive/scans/case002.png"  # an object store's address is no file here either
    table.to_csv(tmp_path / "manifest.csv", index=False)
    [url] = check_manifest(read_manifest(tmp_path / "manifest.csv", keep_going=True))
    assert (url.case_id, url.kind) == ("case002", "URL") and "download or mount them" in url.detail


def test_a_sheet_with_two_columns_of_one_name_is_refused_not_read_from_the_first(tmp_path):
    """pandas reads a second ``label`` column as ``label.1`` and medtl used to train on the first, unasked."""
    (tmp_path / "m.csv").write_text("case_id,image,label,site,label\na,a.png,normal,A,lesion\n")
    with pytest.raises(ManifestError, match="two columns are headed 'label'"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("case_id,image,label,v.1\na,a.png,normal,3\n")  # a name that only looks doubled
    assert read_manifest(tmp_path / "m.csv").table["v.1"].tolist() == ["3"]


def test_splits_named_as_people_name_them_read_as_medtls_and_others_are_refused(tmp_path):
    """``Train``, ``Validation`` and ``TEST`` in a sheet are train, val and test (they used to end the run with an
    error); a split medtl cannot place stays an error naming the case."""
    rows = [("a", "Train"), ("b", "Validation"), ("c", "TEST"), ("d", "valid"), ("e", None)]
    pd.DataFrame([{"case_id": c, "image": "x.png", "split": s} for c, s in rows]).to_csv(tmp_path / "m.csv", index=False)
    splits = read_manifest(tmp_path / "m.csv").table["split"].tolist()
    assert splits[:4] == ["train", "val", "test", "val"] and pd.isna(splits[4])
    pd.DataFrame([{"case_id": "f", "image": "x.png", "split": "holdout"}]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError, match="case f: split 'holdout' is not one of train, val, test"):
        read_manifest(tmp_path / "m.csv")


def test_views_set_for_films_that_state_none_say_nothing_is_checked(tmp_path, caplog):
    """``data.views: [PA]`` over PNG films guarded nothing without a word: no PNG states a view."""
    from medtl.config import load_config
    from medtl.log import logger
    from medtl.train.data import prepare_cases

    m = make_classification_set(tmp_path / "d", n=24, kind="png", size=(16, 16), split=True)
    cfg = load_config(None, [f"data.manifest={m}", "data.image_size=16", "data.views=[PA]", "tracking.enabled=false"])
    logger.addHandler(caplog.handler)
    try:
        prepare_cases(cfg.data, 0, read_manifest(m), tmp_path / "out")
    finally:
        logger.removeHandler(caplog.handler)
    assert "data.views is PA, and no film of manifest.csv states a view" in caplog.text


def test_a_manifests_view_column_chooses_the_films_a_model_trains_on_and_is_checked_when_scoring(tmp_path, caplog,
                                                                                                monkeypatch):
    """PNG and JPEG films state no view; a sheet's view column (``manifest build`` reads CheXpert's and
    ChestX-ray14's) used to be checked nowhere: data.views guarded nothing, and a lateral film was scored by a model
    of frontal ones."""
    import torch

    from medtl.config import load_config
    from medtl.errors import DataError
    from medtl.log import logger
    from medtl.models.checkpoint import ModelBundle
    from medtl.scoring import input_cases, read_predictions, score
    from medtl.train.data import prepare_cases

    m = make_classification_set(tmp_path / "d", n=30, kind="png", size=(16, 16), split=True)
    table = pd.read_csv(m)
    table["view"] = (["PA", "ap", "Lateral"] * 10)[: len(table)]  # as a person writes them
    table.loc[len(table) - 1, "view"] = None  # a film nothing states a view of: it is not judged
    table.to_csv(m, index=False)
    lateral = sorted(table.loc[table["view"] == "Lateral", "case_id"])
    res = run_cli("manifest", "check", str(m))
    said = " ".join(res.stdout.split())
    assert res.returncode == 0 and "views: AP 10, LATERAL 9, PA 10; one model takes them all" in said, said
    res = run_cli("manifest", "check", str(m), "--set", "data.views=[PA,AP]", "--set", "data.image_size=16")
    said = " ".join(res.stdout.split())
    assert res.returncode == 0 and "other view (9): training leaves these films out (data.views)" in said, said
    assert "a LATERAL film (the manifest's view column), and the model takes AP, PA films only" in said

    cfg = load_config(None, [f"data.manifest={m}", "data.image_size=16", "data.views=[PA,AP]", "tracking.enabled=false"])
    logger.addHandler(caplog.handler)
    try:
        frontal = prepare_cases(cfg.data, 0, read_manifest(m), tmp_path / "out")
        every = prepare_cases(cfg.data.model_copy(update={"views": None}), 0, read_manifest(m), tmp_path / "out2")
    finally:
        logger.removeHandler(caplog.handler)
    assert not set(lateral) & set(frontal.table["case_id"]) and len(frontal.table) == 21 and not frontal.skipped
    assert f"data.views is AP,PA: 9 film(s) of other views left out (first: case {lateral[0]})" in caplog.text
    unstated = table.loc[table["view"].isna(), "case_id"].iloc[0]
    assert f"data.views is AP,PA: 1 film(s) state no view and are kept, unjudged (first: case {unstated})" in caplog.text
    assert every.views == ["AP", "LATERAL", "PA"] and len(every.table) == 30
    table.dropna(subset=["view"]).to_csv(m.parent / "stated.csv", index=False)  # every film states its view
    with pytest.raises(DataError, match="data.views is RL, and no film of stated.csv is of those views"):
        prepare_cases(cfg.data.model_copy(update={"views": ["RL"]}), 0, read_manifest(m.parent / "stated.csv"),
                      tmp_path / "out3")  # it used to end in "ValueError: cannot convert float NaN to integer"

    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 2))
    bundle = ModelBundle(net, cfg, ["normal", "lesion"])
    score(bundle, input_cases(m, None), tmp_path / "p.csv", device="cpu")
    scored = read_predictions(tmp_path / "p.csv").set_index("case_id")
    assert (scored.loc[lateral, "status"] == "error").all() and (scored.drop(index=lateral)["status"] == "ok").all()
    assert "a LATERAL film (the manifest's view column)" in scored.loc[lateral[0], "error"]
    from medtl.evaluate.run import predict_logits  # evaluated as trained: the films of other views left out, counted

    _, evaluated = predict_logits(bundle, read_manifest(m).table, torch.device("cpu"))
    assert len(evaluated) == 21 and not set(lateral) & set(evaluated["case_id"])
    from medtl.mlflow_model import MedtlPyfunc  # served, and as Spark's executors call it: a view column beside image

    monkeypatch.setenv("MEDTL_DATA_ROOT", str(tmp_path))
    served, rows = MedtlPyfunc(), read_manifest(m).table
    served.bundle = bundle
    out = served.predict(None, pd.DataFrame({"case_id": rows["case_id"], "image": rows["image_path"],
                                             "view": rows["view"].fillna("")}))
    assert out["status"].tolist() == ["error" if c in lateral else "ok" for c in rows["case_id"]]


def test_a_ct_scan_not_in_hounsfield_units_is_named_by_the_check_and_refused_where_it_is_read(tmp_path):
    """A CT NIfTI written without the DICOM RescaleIntercept (air stored at 24, not -1000), or an MR scan under a
    CT config, used to be windowed -1000..1000 as if in HU, and trained on and scored as a wrong image without a
    word."""
    from medtl.config import load_config
    from medtl.data.transforms import build_transforms
    from medtl.errors import DataError

    vol = np.round(synthetic_volume(np.random.default_rng(3), (16, 16, 8), False)[0])  # HU: air about -1000
    write_nifti(tmp_path / "hu.nii.gz", vol)
    write_nifti(tmp_path / "stored.nii.gz", vol - vol.min())  # the stored values, their intercept dropped
    write_ct_series(tmp_path / "series", vol)  # DICOM: medtl applies the rescale itself
    rows = [("hu", "hu.nii.gz"), ("stored", "stored.nii.gz"), ("series", "series")]
    pd.DataFrame([{"case_id": c, "image": i, "label": "normal"} for c, i in rows]).to_csv(tmp_path / "m.csv", index=False)
    ct = ["--set", "data.modality=ct", "--set", "data.spatial_dims=3", "--set", "data.image_size=16"]
    res = run_cli("manifest", "check", str(tmp_path / "m.csv"), "--deep", *ct)
    said = " ".join(res.stdout.split())
    assert res.returncode == 1 and "not in Hounsfield units (1)" in said, said
    assert "stored │ stored.nii.gz: not in Hounsfield units: no voxel is below 0 (lowest 0)" in said
    assert run_cli("manifest", "check", str(tmp_path / "m.csv"), *ct).returncode == 0  # the headers cannot tell
    wide = run_cli("manifest", "check", str(tmp_path / "m.csv"), "--deep", *ct, "--set", "data.ct_window=[0,2000]")
    assert wide.returncode == 0, wide.stdout  # a window for the values as stored: read as they are
    cfg = load_config(None, ["data.modality=ct", "data.spatial_dims=3", "data.image_size=16"]).data
    read = build_transforms(cfg, train=False)
    assert read({"case_id": "hu", "image": str(tmp_path / "hu.nii.gz")})["image"].shape[1:] == (16, 16, 16)
    read({"case_id": "series", "image": str(tmp_path / "series")})
    with pytest.raises(DataError, match="case stored: not in Hounsfield units"):  # training and scoring: the case's error
        read({"case_id": "stored", "image": str(tmp_path / "stored.nii.gz")})
    as_mr = build_transforms(cfg.model_copy(update={"modality": "mr"}), train=False)
    as_mr({"case_id": "stored", "image": str(tmp_path / "stored.nii.gz")})  # an MR config takes values as they are


def test_the_counts_table_keeps_its_title_on_one_line_however_narrow(tmp_path):
    """Two short labels and no split column make a table narrower than its title, which rich used to wrap."""
    m = make_classification_set(tmp_path / "d", n=6, kind="png", size=(8, 8))
    res = run_cli("manifest", "check", str(m))
    assert res.returncode == 0, res.stderr
    assert "cases per class and split\n" in res.stdout, res.stdout

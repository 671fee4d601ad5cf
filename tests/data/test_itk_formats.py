"""MetaImage and NRRD scans: headers written here by hand from the format specifications, so that the reader is
checked against the formats rather than against SimpleITK's own writer. The same anatomy stored as NIfTI is the
reference: every format must give medtl the same voxels on the same RAS grid."""

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medtl.data.build import build_manifest
from medtl.data.check import check_manifest
from medtl.data.manifest import read_manifest
from medtl.data.readers import load_scan
from medtl.data.synthetic import synthetic_volume
from medtl.errors import DataError
from medtl.evaluate.run import evaluate_table
from medtl.scoring import score
from tests.data.test_inverse import bundle_for, reorient, rotation

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _vectors(affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each voxel axis's step in LPS millimetres (one row per axis) and the first voxel's LPS position."""
    lps = LPS @ affine_ras
    return lps[:3, :3].T, lps[:3, 3]


def write_nrrd(path, data: np.ndarray, affine_ras: np.ndarray, space: str = "left-posterior-superior",
               encoding: str = "raw", fields: dict[str, str] | None = None) -> None:
    """NRRD 0004: ``space directions`` are the axes' steps, fastest axis first, in the named space; ``fields`` are
    key/value pairs (``key:=value``), as 3D Slicer names its segments."""
    steps, origin = _vectors(affine_ras)
    if space == "right-anterior-superior":
        flip = np.array([-1.0, -1.0, 1.0])
        steps, origin = steps * flip, origin * flip
    fmt = lambda v: "(" + ",".join(f"{x:.10g}" for x in v) + ")"  # noqa: E731
    header = ("NRRD0004\ntype: short\ndimension: 3\n"
              f"space: {space}\nsizes: {' '.join(str(n) for n in data.shape)}\n"
              f"space directions: {' '.join(fmt(s) for s in steps)}\nkinds: domain domain domain\n"
              f"endian: little\nencoding: {encoding}\nspace origin: {fmt(origin)}\n"
              + "".join(f"{key}:={value}\n" for key, value in (fields or {}).items()) + "\n")
    body = np.asarray(data, dtype="<i2").tobytes(order="F")  # the first axis fastest
    path.write_bytes(header.encode() + (gzip.compress(body) if encoding == "gzip" else body))


def write_metaimage(path, data: np.ndarray, affine_ras: np.ndarray) -> None:
    """MetaImage: TransformMatrix lists each axis's unit direction in turn (LPS), ElementSpacing their lengths;
    a .mhd names its data file, a .mha holds it (LOCAL)."""
    steps, origin = _vectors(affine_ras)
    spacing = np.linalg.norm(steps, axis=1)
    body = np.asarray(data, dtype="<i2").tobytes(order="F")
    detached = path.suffix == ".mhd"
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"TransformMatrix = {' '.join(f'{x:.10g}' for x in (steps / spacing[:, None]).ravel())}\n"
              f"Offset = {' '.join(f'{x:.10g}' for x in origin)}\n"
              f"ElementSpacing = {' '.join(f'{x:.10g}' for x in spacing)}\n"
              f"DimSize = {' '.join(str(n) for n in data.shape)}\nElementType = MET_SHORT\n"
              f"ElementDataFile = {path.with_suffix('.raw').name if detached else 'LOCAL'}\n")
    if detached:
        path.write_text(header)
        path.with_suffix(".raw").write_bytes(body)
    else:
        path.write_bytes(header.encode() + body)


def anatomy(codes: str = "PIR", oblique: float = 20.0):
    """The synthetic CT of the inverse tests, stored in another voxel order and tilted: (volume, mask, RAS affine)."""
    vol, mask = synthetic_volume(np.random.default_rng(3), (40, 36, 20), True, lesion_scale=0.3)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, 15.0, 40.0]
    vol, affine_o = reorient(vol, affine, codes)
    mask, _ = reorient(mask, affine, codes)
    return np.round(vol).astype(np.int16), mask.astype(np.int16), rotation(oblique) @ affine_o


WRITERS = {
    "NRRD, LPS space": lambda p, d, a: write_nrrd(p.with_suffix(".nrrd"), d, a),
    "NRRD, RAS space, gzip": lambda p, d, a: write_nrrd(p.with_suffix(".nrrd"), d, a, "right-anterior-superior", "gzip"),
    "MetaImage, one file": lambda p, d, a: write_metaimage(p.with_suffix(".mha"), d, a),
    "MetaImage, header and data": lambda p, d, a: write_metaimage(p.with_suffix(".mhd"), d, a),
}
SUFFIX = {"NRRD, LPS space": ".nrrd", "NRRD, RAS space, gzip": ".nrrd", "MetaImage, one file": ".mha",
          "MetaImage, header and data": ".mhd"}


@pytest.mark.parametrize("fmt", WRITERS)
def test_a_scan_loads_as_its_nifti_twin_does(tmp_path, fmt):
    vol, _, affine = anatomy()
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "twin.nii.gz"))
    WRITERS[fmt](tmp_path / "scan", vol, affine)
    got, twin = load_scan(str(tmp_path / f"scan{SUFFIX[fmt]}")), load_scan(str(tmp_path / "twin.nii.gz"))
    assert np.array_equal(got.numpy(), twin.numpy())
    assert np.allclose(got.affine.numpy(), affine, atol=1e-6) and np.allclose(got.affine, twin.affine, atol=1e-6)


def test_a_freesurfer_volume_loads_as_its_nifti_twin_does(tmp_path):
    """FreeSurfer's MGH (``brainmask.mgz``) states its affine as NIfTI does; nibabel reads both."""
    vol, _, affine = anatomy()
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "twin.nii.gz"))
    nib.save(nib.MGHImage(vol.astype(np.float32), affine), str(tmp_path / "brainmask.mgz"))
    got, twin = load_scan(str(tmp_path / "brainmask.mgz")), load_scan(str(tmp_path / "twin.nii.gz"))
    assert np.array_equal(got.numpy(), twin.numpy()) and np.allclose(got.affine, twin.affine, atol=1e-4)
    raw = bytearray(nib.MGHImage(np.zeros((2, 2, 2), np.float32), affine).to_bytes())
    raw[4:16] = np.array([30000, 30000, 30000], dtype=">i4").tobytes()  # width, height, depth: a header is a claim
    (tmp_path / "forged.mgz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="forged.mgz: header declares 27,000,000,000,000 voxels, above the limit"):
        load_scan(str(tmp_path / "forged.mgz"))


@pytest.mark.parametrize("fmt", ["NRRD, RAS space, gzip", "MetaImage, header and data"])
def test_a_perfect_prediction_comes_back_in_the_scan_s_format_on_its_grid(tmp_path, fmt):
    """Through the whole path (reorientation, resize, inverse): Dice 1 in evaluation, and the mask written by
    scoring holds exactly the reference voxels, with the scan's header geometry, in the scan's format."""
    import SimpleITK as sitk

    vol, mask, affine = anatomy("LPS", oblique=20.0)
    WRITERS[fmt](tmp_path / "img", vol, affine)
    WRITERS[fmt](tmp_path / "img_mask", mask, affine)
    image = f"img{SUFFIX[fmt]}"
    pd.DataFrame({"case_id": ["c"], "image": [image], "mask": [f"img_mask{SUFFIX[fmt]}"]}).to_csv(tmp_path / "m.csv",
                                                                                                 index=False)
    table = read_manifest(tmp_path / "m.csv").table
    assert check_manifest(read_manifest(tmp_path / "m.csv"), spatial_dims=3, deep=True) == []
    ev = evaluate_table(bundle_for([40, 36, 20]), table, tmp_path / "ev")
    assert ev.metrics["dice_mean"] == pytest.approx(1.0)

    score(bundle_for([40, 36, 20]), [{"case_id": "c", "image": str(tmp_path / image)}], tmp_path / "p.csv",
          masks_out=tmp_path / "masks", device="cpu")
    written_path = tmp_path / "masks" / ("c.seg.nrrd" if "NRRD" in fmt else "c.mha")  # Slicer opens a segmentation
    written, source = sitk.ReadImage(str(written_path)), sitk.ReadImage(str(tmp_path / image))
    assert written.GetOrigin() == pytest.approx(source.GetOrigin())
    assert written.GetSpacing() == pytest.approx(source.GetSpacing())
    assert written.GetDirection() == pytest.approx(source.GetDirection(), abs=1e-9)
    labels = sitk.GetArrayFromImage(written).T  # back to the first axis fastest, as written above
    assert np.array_equal(labels > 0, mask > 0)
    if "NRRD" in fmt:
        from medtl.data.itk_formats import read_itk_header
        from medtl.data.slicer_masks import segment_names

        assert segment_names(read_itk_header(written_path)) == {1: "lesion"}
    volume = pd.read_csv(tmp_path / "p.csv")["lesion_volume_ml"][0]
    assert volume == pytest.approx((labels > 0).sum() * 2.0 / 1000)  # voxels are 1 x 1 x 2 mm


def test_a_film_in_metaimage_is_a_film_with_its_pixel_spacing(tmp_path):
    """grand-challenge.org's chest radiographs (NODE21) are 2-D .mha files."""
    film = np.arange(12 * 9, dtype=np.int16).reshape(9, 12)  # row, column as stored: columns fastest
    (tmp_path / "cxr.mha").write_bytes(
        b"ObjectType = Image\nNDims = 2\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        b"ElementSpacing = 0.143 0.2\nDimSize = 12 9\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
        + film.astype("<i2").tobytes())
    got = load_scan(str(tmp_path / "cxr.mha"))
    assert tuple(got.shape) == (1, 12, 9) and np.array_equal(got.numpy()[0], film.T)
    assert np.allclose(got.affine.numpy(), np.diag([0.143, 0.2, 1.0]))


def test_manifest_build_pairs_slicer_and_challenge_files(tmp_path):
    """A .mhd's data file is no case; a 3D Slicer segmentation (``.seg.nrrd``) and labelmap (``-label``) pair
    with their scan."""
    vol, mask, affine = anatomy()
    scans = tmp_path / "scans"
    scans.mkdir()
    write_metaimage(scans / "a.mhd", vol, affine)
    write_nrrd(scans / "b.nrrd", vol, affine)
    write_nrrd(scans / "b.seg.nrrd", mask, affine)
    write_metaimage(scans / "a-label.mha", mask, affine)
    table = build_manifest(scans, tmp_path / "m.csv")
    assert sorted(table["case_id"]) == ["a", "b"]
    masks = dict(zip(table["case_id"], table["mask"]))
    assert masks["a"].endswith("a-label.mha") and masks["b"].endswith("b.seg.nrrd")


def _header_only(path, dims: str, sizes: str, extra: str = "") -> None:
    path.write_text(f"NRRD0004\ntype: short\ndimension: {dims}\nsizes: {sizes}\n{extra}encoding: raw\n"
                    "endian: little\n\n")


@pytest.mark.parametrize("name, make, says", [
    ("4-D", lambda p: _header_only(p, "4", "2 4 4 3", "kinds: domain domain domain domain\n"), "a 4-D image"),
    ("Slicer layers", lambda p: _header_only(p, "4", "2 4 4 3", "kinds: list domain domain domain\n"),
     "export the segmentation as a labelmap"),
    ("colour", lambda p: _header_only(p, "4", "3 4 4 3", "kinds: RGB-color domain domain domain\n"),
     "3 values per voxel"),
    ("huge", lambda p: _header_only(p, "3", "30000 30000 30000"), "above the limit"),
    ("truncated", lambda p: _header_only(p, "3", "4 4 3"), "missing or truncated"),
])
def test_a_bad_file_is_one_line_naming_it(tmp_path, name, make, says):
    path = tmp_path / "bad.nrrd"
    make(path)
    with pytest.raises(DataError) as err:
        load_scan(str(path))
    assert str(err.value).startswith("bad.nrrd: ") and says in str(err.value) and "\n" not in str(err.value)
    pd.DataFrame({"case_id": ["c"], "image": ["bad.nrrd"], "label": ["x"]}).to_csv(tmp_path / "m.csv", index=False)
    problems = check_manifest(read_manifest(tmp_path / "m.csv"), deep=True)
    assert [p.case_id for p in problems] == ["c"] and says in problems[0].detail


def test_two_scans_behind_one_header_text_are_two_scans(tmp_path):
    """A .mhd names its data file: two patients' folders may hold the same header text (scan.mhd naming scan.raw)
    over other voxels. Only the same voxels make the same scan."""
    vol, _, affine = anatomy()
    for patient, shift in (("p1", 0), ("p2", 1), ("p3", 0)):
        (tmp_path / patient).mkdir()
        write_metaimage(tmp_path / patient / "scan.mhd", vol + shift, affine)
    assert (tmp_path / "p1" / "scan.mhd").read_bytes() == (tmp_path / "p2" / "scan.mhd").read_bytes()
    pd.DataFrame({"case_id": ["a", "b", "c"], "image": ["p1/scan.mhd", "p2/scan.mhd", "p3/scan.mhd"],
                  "label": ["x", "y", "x"]}).to_csv(tmp_path / "m.csv", index=False)
    problems = check_manifest(read_manifest(tmp_path / "m.csv"), deep=True)
    assert [(p.case_id, p.kind) for p in problems] == [("c", "duplicate image")] and "as case a" in problems[0].detail


def test_the_disk_cache_sees_a_new_data_file_behind_an_unchanged_header(tmp_path):
    """A re-exported .raw under an unchanged .mhd is another scan to preprocess, not the cache of the old one."""
    import os

    from medtl.data.datasets import stamped_hash
    from medtl.data.itk_formats import data_files

    vol, _, affine = anatomy()
    write_metaimage(tmp_path / "scan.mhd", vol, affine)
    (tmp_path / "other.nhdr").write_text("NRRD0004\ntype: short\ndimension: 1\nsizes: 4\ndata file: ../far/away.raw.gz\n")
    write_metaimage(tmp_path / "local.mha", vol, affine)
    assert data_files(tmp_path / "scan.mhd") == [tmp_path / "scan.raw"]
    assert data_files(tmp_path / "other.nhdr") == [tmp_path / "../far/away.raw.gz"]
    assert data_files(tmp_path / "local.mha") == []
    item = {"case_id": "c", "image": str(tmp_path / "scan.mhd")}
    before = stamped_hash(item)
    os.utime(tmp_path / "scan.raw", ns=(0, 10**18))  # rewritten later, header untouched
    assert stamped_hash(item) != before

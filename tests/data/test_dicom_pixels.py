"""DICOM pixel conventions a real archive mixes: MONOCHROME1 films, modality lookup tables, multi-frame files
with and without per-frame geometry. Each must reach a model as the same image its classic twin gives."""

import numpy as np
import pydicom
import pytest
from pydicom.uid import MultiFrameGrayscaleWordSecondaryCaptureImageStorage, generate_uid

from medtl.data.check import scan_geometry
from medtl.data.readers import load_scan
from medtl.data.synthetic import _base_dataset, write_ct_series, write_xray_dicom
from medtl.errors import DataError


def film() -> np.ndarray:
    """A (column, row) radiograph: a bright block on a ramp, so a flip or an inversion cannot go unseen."""
    img = np.tile(np.arange(30, dtype=np.float64) * 10, (24, 1)) + 200
    img[4:10, 3:12] = 3000
    return img


@pytest.mark.parametrize("how", ["MONOCHROME1", "INVERSE presentation LUT"])
def test_an_inverted_film_loads_as_its_monochrome2_twin(tmp_path, how):
    img = film()
    write_xray_dicom(tmp_path / "m2.dcm", img)
    ds = pydicom.dcmread(tmp_path / "m2.dcm")
    ds.PixelData = (4095 - img.T).astype(np.uint16).tobytes()  # low values white: the film stored negative
    if how == "MONOCHROME1":
        ds.PhotometricInterpretation = "MONOCHROME1"
    else:
        ds.PresentationLUTShape = "INVERSE"
    ds.save_as(tmp_path / "inv.dcm")
    m2, inv = load_scan(tmp_path / "m2.dcm")[0].numpy(), load_scan(tmp_path / "inv.dcm")[0].numpy()
    np.testing.assert_allclose(inv - m2, (inv - m2).mean())  # the same film up to an offset, not its negative
    assert inv[5, 4] > inv[20, 20]  # the block stays bright


def test_an_identity_presentation_lut_on_monochrome2_changes_nothing(tmp_path):
    write_xray_dicom(tmp_path / "m2.dcm", film())
    ds = pydicom.dcmread(tmp_path / "m2.dcm")
    ds.PresentationLUTShape = "IDENTITY"
    ds.save_as(tmp_path / "id.dcm")
    np.testing.assert_array_equal(load_scan(tmp_path / "id.dcm").numpy(), load_scan(tmp_path / "m2.dcm").numpy())


def test_a_modality_lut_sequence_maps_stored_values_through_its_table(tmp_path):
    img = np.zeros((8, 6))
    img[:, 3:] = 2  # stored values 0 and 2
    write_xray_dicom(tmp_path / "lut.dcm", img)
    ds = pydicom.dcmread(tmp_path / "lut.dcm")
    item = pydicom.Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 16])  # 4 entries, the first for stored value 0, 16 bits
    item.ModalityLUTType = "OD"
    item.add_new("LUTData", "US", [100, 200, 700, 900])
    ds.ModalityLUTSequence = [item]
    ds.save_as(tmp_path / "lut.dcm")
    out = load_scan(tmp_path / "lut.dcm")[0].numpy()
    np.testing.assert_array_equal(np.unique(out[:, :3]), [100])
    np.testing.assert_array_equal(np.unique(out[:, 3:]), [700])


def test_a_multiframe_cine_loads_column_row_frame_as_check_reports_it(tmp_path):
    path = tmp_path / "cine.dcm"
    ds = _base_dataset(path, MultiFrameGrayscaleWordSecondaryCaptureImageStorage, "ANON", generate_uid(),
                       generate_uid())
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames, ds.PixelRepresentation = "US", 20, 30, 5, 0
    frames = np.zeros((5, 20, 30), np.uint16)  # frame, row, column as stored
    frames += (np.arange(5) * 100)[:, None, None].astype(np.uint16)
    frames += np.arange(20)[None, :, None].astype(np.uint16)
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    loaded = load_scan(path)[0].numpy()
    assert loaded.shape == scan_geometry(str(path), deep=False).shape == (30, 20, 5)
    np.testing.assert_array_equal(loaded, frames.transpose(2, 1, 0))


OBLIQUE = (np.cos(0.3), np.sin(0.3), 0, -np.sin(0.3) * np.cos(0.2), np.cos(0.3) * np.cos(0.2), np.sin(0.2))


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, -1, 0), OBLIQUE], ids=["feet-first", "oblique"])
def test_an_enhanced_multiframe_file_loads_as_the_series_it_was_converted_from(tmp_path, orientation):
    import highdicom as hd

    vol = np.random.default_rng(0).normal(0, 100, (24, 20, 6)).round().astype(np.float32)
    write_ct_series(tmp_path / "series", vol, orientation=orientation)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(p) for p in sorted((tmp_path / "series").iterdir())], series_instance_uid=hd.UID(),
        series_number=2, sop_instance_uid=hd.UID(), instance_number=1)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    series, multi = load_scan(tmp_path / "series"), load_scan(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(multi.numpy(), series.numpy())
    np.testing.assert_allclose(multi.affine.numpy(), series.affine.numpy(), atol=1e-4)
    np.testing.assert_array_equal(series[0].numpy(), vol)


def test_an_enhanced_file_whose_frames_leave_a_gap_is_the_files_error(tmp_path):
    import highdicom as hd

    write_ct_series(tmp_path / "series", np.zeros((8, 8, 6), np.float32), skip_slices=[3])
    hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(p) for p in sorted((tmp_path / "series").iterdir())], series_instance_uid=hd.UID(),
        series_number=2, sop_instance_uid=hd.UID(), instance_number=1).save_as(tmp_path / "gap.dcm")
    with pytest.raises(DataError, match=r"gap\.dcm: the frames .* do not form one regularly spaced volume"):
        load_scan(tmp_path / "gap.dcm")


def test_a_localizer_filed_in_its_series_is_left_out_of_the_volume(tmp_path):
    """CT exports often file the scout, at a right angle to the slices, under the series it planned."""
    vol = np.random.default_rng(1).normal(0, 100, (12, 10, 5)).round().astype(np.float32)
    write_ct_series(tmp_path / "series", vol)
    scout = pydicom.dcmread(next((tmp_path / "series").iterdir()))
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.SOPInstanceUID = generate_uid()
    scout.save_as(tmp_path / "series" / "SCOUT")
    assert scan_geometry(str(tmp_path / "series"), deep=False).shape == (12, 10, 5)
    np.testing.assert_array_equal(load_scan(tmp_path / "series")[0].numpy(), vol)


def test_a_folder_of_localizers_only_says_so(tmp_path):
    write_ct_series(tmp_path / "scouts", np.zeros((8, 8, 2), np.float32))
    for f in (tmp_path / "scouts").iterdir():
        ds = pydicom.dcmread(f)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(f)
    with pytest.raises(DataError, match=r"scouts: folder holds no scan, only 2 DICOM object\(s\) that are not one"):
        load_scan(tmp_path / "scouts")


def test_a_case_folder_holding_a_nifti_file_says_to_give_the_file(tmp_path):
    from medtl.data.synthetic import write_nifti

    write_nifti(tmp_path / "case7" / "image.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(DataError, match="case7: a folder is read as one DICOM series, and this one holds image.nii.gz"):
        load_scan(tmp_path / "case7")


@pytest.mark.parametrize("syntax", ["JPEGLosslessProcess14_1", "JPEGLosslessProcess14", "JPEG2000Lossless", "RLELossless"])
def test_a_series_compressed_as_archives_store_it_loads_as_its_uncompressed_twin(tmp_path, syntax):
    """JPEG Lossless is what most PACS exports of CT and radiographs use; without a decoder every case of such an
    export was an error. GDCM (a dependency) compresses the series here and decodes it in medtl."""
    import gdcm

    vol = np.random.default_rng(0).integers(0, 2000, (16, 16, 4)).astype(np.float32) - 1000
    write_ct_series(tmp_path / "raw", vol)
    (tmp_path / "packed").mkdir()
    for f in sorted((tmp_path / "raw").iterdir()):
        reader = gdcm.ImageReader()
        reader.SetFileName(str(f))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(tmp_path / "packed" / f.name))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
    packed = pydicom.dcmread(next((tmp_path / "packed").iterdir()))
    assert packed.file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(load_scan(tmp_path / "packed").numpy(), load_scan(tmp_path / "raw").numpy())

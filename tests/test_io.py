"""Image input/output: real NIfTI/DICOM/JPEG/PNG files, orientation round trips, bad inputs, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from oncoseg.errors import ImageReadError, OncoSegError
from oncoseg.image import MedicalImage
from oncoseg.io import MODALITIES, atomic_write_path, guess_modality, load_image, save_image, save_mask

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TOTALSEG = DATA / "totalsegmentator-example"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def synthetic_volume(orientation: str = "LPS") -> sitk.Image:
    """A small asymmetric random label volume on an LPS grid, then reoriented to ``orientation``."""
    array = np.random.default_rng(0).integers(0, 5, size=(5, 6, 7), dtype=np.uint8)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    return sitk.DICOMOrient(image, orientation)


def write_dicom_series(folder: Path, volume: sitk.Image, series_uid: str, prefix: str) -> None:
    """Write ``volume`` (int16, values in HU) as one CT file per slice with an intercept of -1024."""
    row, col = volume.GetDirection()[0:7:3], volume.GetDirection()[1:8:3]
    for k in range(volume.GetSize()[2]):
        slice_ = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0052": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:g}" for v in position),
            "0020|0037": "\\".join(f"{v:g}" for v in (*row, *col)),
            "0028|1052": "-1024",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{prefix}{k}.dcm"))
        writer.Execute(slice_)


# --- DICOM -------------------------------------------------------------------------------------------------


@needs_data
def test_real_dicom_series_loads_in_hu_with_files_in_z_order():
    image = load_image(TOTALSEG / "example_ct_dicom")
    assert image.shape == (20, 512, 512) and image.is_3d
    assert image.modality == "ct" and image.metadata["modality_source"] == "dicom"
    assert image.source_orientation == "LPS"
    # RescaleIntercept (-1024) applied: air/background at about -1000 HU, bone below a few thousand.
    assert -1100 <= image.array.min() <= -900
    assert 300 <= image.array.max() <= 4000

    files, uids = image.metadata["dicom_files"], image.metadata["SOPInstanceUIDs"]
    assert len(files) == len(uids) == len(set(uids)) == 20
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    np.testing.assert_allclose(z, image.origin[2] + image.spacing[2] * np.arange(20), atol=1e-3)
    assert uids == [str(h.file_meta.MediaStorageSOPInstanceUID) for h in headers]
    # Same series whichever file of it is named.
    assert load_image(files[7]).metadata["dicom_files"] == files


@needs_data
def test_dicom_series_and_its_nifti_label_map_share_one_grid():
    ct = load_image(TOTALSEG / "example_ct_dicom")
    labels = load_image(TOTALSEG / "example_seg_dicom.nii.gz")
    assert labels.source_orientation == "LAS"  # the file is stored flipped in y: reorientation must undo it
    assert labels.shape == ct.shape
    np.testing.assert_allclose(labels.spacing, ct.spacing, atol=1e-3)
    np.testing.assert_allclose(labels.origin, ct.origin, atol=1e-3)
    np.testing.assert_allclose(labels.direction, ct.direction, atol=1e-3)

    names = json.loads((TOTALSEG / "label_map_total_and_total_mr.json").read_text(encoding="utf-8"))["total"]
    liver = labels.array == int(next(k for k, v in names.items() if v == "liver"))
    assert liver.sum() > 10_000
    assert 0 < ct.array[liver].mean() < 150  # soft tissue, not air or bone
    assert ct.array[np.roll(liver, 200, axis=1)].mean() < ct.array[liver].mean() - 50  # a shifted map misses


def test_dicom_series_file_order_follows_array_z_after_reorientation(tmp_path):
    # Rows run anterior and slices go inferior (normal -z), so LPS reorientation flips y and z.
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 3
    volume = sitk.GetImageFromArray(array)
    volume.SetSpacing((0.8, 0.9, 2.5))
    volume.SetOrigin((10.0, 20.0, 30.0))
    volume.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, -1))
    write_dicom_series(tmp_path, volume, "1.2.826.0.1.3680043.2.1125.9", "a")

    image = load_image(tmp_path)
    assert image.source_orientation == "LAI" and image.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(sitk.DICOMOrient(volume, "LPS")))
    assert image.metadata["dicom_slice_axis"] == 0
    assert [Path(f).name for f in image.metadata["dicom_files"]] == ["a3.dcm", "a2.dcm", "a1.dcm", "a0.dcm"]
    assert image.metadata["SOPInstanceUIDs"] == [f"1.2.826.0.1.3680043.2.1125.9.{k}" for k in (3, 2, 1, 0)]
    for z, path in enumerate(image.metadata["dicom_files"]):
        header = pydicom.dcmread(path)
        assert float(header.ImagePositionPatient[2]) == pytest.approx(image.origin[2] + z * image.spacing[2])
        hu = header.pixel_array * float(header.RescaleSlope) + float(header.RescaleIntercept)
        assert hu.min() == image.array[z].min()


def test_folder_with_two_series_loads_the_larger_unless_a_file_names_one(tmp_path):
    volume = sitk.Cast(synthetic_volume(), sitk.sitkInt16)
    write_dicom_series(tmp_path, volume, "1.2.826.0.1.3680043.2.1125.7", "big")
    write_dicom_series(tmp_path, volume[:, :, :2], "1.2.826.0.1.3680043.2.1125.8", "small")

    largest = load_image(tmp_path)
    assert largest.shape == (5, 6, 7) and largest.metadata["dicom_series_count"] == 2
    assert largest.metadata["SeriesInstanceUID"] == "1.2.826.0.1.3680043.2.1125.7"
    named = load_image(tmp_path / "small1.dcm")
    assert named.shape == (2, 6, 7) and named.metadata["SeriesInstanceUID"] == "1.2.826.0.1.3680043.2.1125.8"


# --- NIfTI / NRRD / MetaImage ------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_mask_saved_on_a_real_ct_overlays_the_original_label_file(tmp_path, suffix):
    ct = load_image(TOTALSEG / "example_ct_sm.nii.gz")
    assert ct.source_orientation == "RAS"
    assert ct.modality == "ct" and ct.metadata["modality_source"] == "guessed"
    labels = load_image(TOTALSEG / "example_seg.nii.gz")

    written = save_mask(labels.array, ct, tmp_path / f"mask{suffix}")

    assert written == tmp_path / f"mask{suffix}" and os.listdir(tmp_path) == [f"mask{suffix}"]
    original, reread = sitk.ReadImage(str(TOTALSEG / "example_seg.nii.gz")), sitk.ReadImage(str(written))
    assert reread.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reread), sitk.GetArrayFromImage(original))
    assert_same_geometry(reread, original)


@pytest.mark.parametrize("orientation", ["RAS", "PIR", "ASL", "LPS"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_any_orientation_loads_as_lps_and_saves_back_in_its_own(tmp_path, orientation, suffix):
    lps = synthetic_volume()
    source = synthetic_volume(orientation)
    sitk.WriteImage(source, str(tmp_path / f"in{suffix}"))

    image = load_image(tmp_path / f"in{suffix}")

    assert image.source_orientation == orientation
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(lps))
    np.testing.assert_allclose(image.origin, lps.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(image.spacing, lps.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.direction, lps.GetDirection(), atol=1e-6)

    reread = sitk.ReadImage(str(save_mask(image.array, image, tmp_path / f"out{suffix}")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reread), sitk.GetArrayFromImage(source))
    assert_same_geometry(reread, source)


def test_save_image_keeps_values_dtype_and_orientation(tmp_path):
    source = sitk.Cast(synthetic_volume("PIR"), sitk.sitkFloat32) * 1.5 - 2.25
    sitk.WriteImage(source, str(tmp_path / "in.mha"))
    reread = sitk.ReadImage(str(save_image(load_image(tmp_path / "in.mha"), tmp_path / "out.nii.gz")))
    assert reread.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reread), sitk.GetArrayFromImage(source))
    assert_same_geometry(reread, source)


def test_4d_nifti_and_vector_pixels_become_channels_last(tmp_path):
    first = sitk.Cast(synthetic_volume("RAS"), sitk.sitkFloat32)
    second = first * 2
    sitk.WriteImage(sitk.JoinSeries([first, second]), str(tmp_path / "4d.nii.gz"))
    sitk.WriteImage(sitk.Compose([first, second, first]), str(tmp_path / "vector.mha"))

    four_d = load_image(tmp_path / "4d.nii.gz")
    assert four_d.array.shape == (5, 6, 7, 2) and four_d.channels == 2 and four_d.shape == (5, 6, 7)
    lps = sitk.GetArrayFromImage(synthetic_volume())
    np.testing.assert_array_equal(four_d.array[..., 0], lps)
    np.testing.assert_array_equal(four_d.array[..., 1], 2 * lps)
    vector = load_image(tmp_path / "vector.mha")
    assert vector.array.shape == (5, 6, 7, 3) and vector.channels == 3 and vector.source_orientation == "RAS"
    np.testing.assert_array_equal(vector.array[..., 2], lps)


def test_modality_argument_beats_the_guess_and_guess_follows_intensities(tmp_path):
    hu = np.full((4, 8, 8), -1000, dtype=np.int16)
    hu[:, 2:6, 2:6] = 400
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(hu.astype(np.float32) / 3), str(tmp_path / "mr.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 4, 5), np.nan, np.float32)), str(tmp_path / "nan.nii"))

    assert load_image(tmp_path / "ct.nrrd").modality == "ct"
    assert load_image(tmp_path / "mr.nrrd").modality == "mri"  # HU-like range but not integer-valued
    assert load_image(tmp_path / "nan.nii").modality == "mri"  # NaN-only loads; preprocessing handles NaN
    chosen = load_image(tmp_path / "ct.nrrd", modality="PT")
    assert chosen.modality == "pet" and chosen.metadata["modality_source"] == "argument"
    with pytest.raises(OncoSegError, match="'sonar'"):
        load_image(tmp_path / "ct.nrrd", modality="sonar")
    assert set(MODALITIES) == {
        "ct",
        "mri",
        "ultrasound",
        "dermoscopy",
        "endoscopy",
        "xray",
        "pet",
        "mammography",
        "cxr",
        "srh",
    }


# --- 2D photos ---------------------------------------------------------------------------------------------


@needs_data
def test_kvasir_jpeg_is_rgb_and_busi_png_is_grey():
    kvasir_path = min((DATA / "kvasir-seg" / "images").glob("*.jpg"))
    kvasir = load_image(kvasir_path)
    with Image.open(kvasir_path) as pil:
        assert kvasir.array.shape == (pil.height, pil.width, 3)
    assert kvasir.channels == 3 and kvasir.array.dtype == np.uint8 and kvasir.spacing == (1.0, 1.0)
    assert kvasir.modality == "endoscopy" and kvasir.metadata["modality_source"] == "guessed"

    busi = load_image(DATA / "busi" / "benign" / "benign (1).png")
    assert busi.array.ndim == 2 and busi.channels == 1 and busi.array.dtype == np.uint8
    assert busi.modality == "ultrasound" and guess_modality("x.png", busi) == "ultrasound"
    assert busi.origin == (0.0, 0.0) and busi.source_orientation is None


def test_greyscale_pictures_are_guessed_radiographs_when_deep_or_large_else_ultrasound(tmp_path):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 4096, (300, 250), dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(rng.integers(0, 256, (1600, 1300), dtype=np.uint8)).save(tmp_path / "large.png")
    Image.fromarray(rng.integers(0, 256, (400, 500), dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "colour.png")
    guesses = {name: load_image(tmp_path / f"{name}.png") for name in ("deep", "large", "small", "colour")}
    assert {name: image.modality for name, image in guesses.items()} == {
        "deep": "xray", "large": "xray", "small": "ultrasound", "colour": "endoscopy",
    }  # fmt: skip
    assert all(image.describe()["modality_source"] == "guessed" for image in guesses.values())


@needs_data
def test_busi_ultrasound_pictures_stay_guessed_as_ultrasound():
    pictures = sorted(p for p in (DATA / "busi").glob("*/*.png") if "_mask" not in p.name)
    assert len(pictures) == 687
    assert {load_image(p).modality for p in pictures[::7]} == {"ultrasound"}  # every 7th: 99 pictures


def test_pictures_and_arrays_measure_in_pixels_unless_a_spacing_is_given(tmp_path):
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "p.png")
    picture = load_image(tmp_path / "p.png")
    assert picture.spacing == (1.0, 1.0) and picture.spacing_unit == "px"
    assert picture.with_array(np.zeros((30, 40), np.uint8)).spacing_unit == "px"  # a mask keeps it
    given = load_image(tmp_path / "p.png", spacing="0.2,0.3")
    assert (
        given.spacing == (0.2, 0.3)
        and given.spacing_unit == "mm"
        and given.describe()["spacing_unit"] == "mm"
    )
    assert load_image(tmp_path / "p.png", spacing=0.5).spacing == (0.5, 0.5)  # one value: square pixels
    for bad in ("0,1", "a,b", "1,2,3", "nan"):
        with pytest.raises(OncoSegError, match="expected X,Y .*pixel size in mm"):
            load_image(tmp_path / "p.png", spacing=bad)
    sitk.WriteImage(synthetic_volume(), str(tmp_path / "v.nii.gz"))
    volume = load_image(tmp_path / "v.nii.gz")
    assert volume.spacing_unit == "mm"
    with pytest.raises(OncoSegError, match="has its own spacing"):
        load_image(tmp_path / "v.nii.gz", spacing="1,1,1")
    assert MedicalImage.from_array(np.zeros((4, 5))).spacing_unit == "px"
    assert MedicalImage.from_array(np.zeros((4, 5)), spacing=(0.7, 0.7)).spacing_unit == "mm"


def test_dicom_without_pixel_spacing_is_in_pixels(tmp_path):
    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    (tmp_path / "with").mkdir()
    ct.save_as(tmp_path / "with" / "ct.dcm")
    del ct.PixelSpacing
    (tmp_path / "without").mkdir()
    ct.save_as(tmp_path / "without" / "ct.dcm")
    assert load_image(tmp_path / "with").spacing_unit == "mm"
    bare = load_image(tmp_path / "without")
    assert bare.spacing_unit == "px" and bare.spacing == (1.0, 1.0)
    assert load_image(tmp_path / "without", spacing="0.5").spacing_unit == "mm"


def test_16_bit_png_keeps_values_and_rgba_drops_alpha(tmp_path):
    deep = np.array([[0, 1000, 65535], [3, 40000, 7]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png").array, deep)

    rgba = np.random.default_rng(1).integers(0, 256, size=(4, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    loaded = load_image(tmp_path / "rgba.png")
    assert loaded.channels == 3
    np.testing.assert_array_equal(loaded.array, rgba[..., :3])


def test_2d_masks_round_trip_through_png(tmp_path):
    reference = MedicalImage.from_array(np.zeros((6, 9), np.uint8))
    binary = np.zeros((6, 9), bool)
    binary[1:4, 2:7] = True
    labels = binary.astype(np.uint8) + np.eye(6, 9, dtype=np.uint8) * 2

    save_mask(binary, reference, tmp_path / "binary.png")
    save_mask(labels, reference, tmp_path / "labels.png")

    np.testing.assert_array_equal(load_image(tmp_path / "binary.png").array, binary * 255)
    np.testing.assert_array_equal(load_image(tmp_path / "labels.png").array, labels)
    assert sorted(os.listdir(tmp_path)) == ["binary.png", "labels.png"]


# --- bad inputs and atomic writes --------------------------------------------------------------------------


def make_bad_input(tmp_path: Path, kind: str) -> Path:
    rng = np.random.default_rng(2)
    if kind == "missing":
        return tmp_path / "missing.nii.gz"
    if kind in ("garbage.nii.gz", "garbage.png"):
        (tmp_path / kind).write_bytes(rng.bytes(600))
        return tmp_path / kind
    if kind == "truncated.nii.gz":
        sitk.WriteImage(sitk.GetImageFromArray(rng.normal(size=(8, 30, 30))), str(tmp_path / "full.nii.gz"))
        data = (tmp_path / "full.nii.gz").read_bytes()
        (tmp_path / kind).write_bytes(data[: len(data) // 2])
        return tmp_path / kind
    if kind == "unknown.xyz":
        (tmp_path / kind).write_text("hello", encoding="utf-8")
        return tmp_path / kind
    if kind == "5d.nii":
        nibabel.save(nibabel.Nifti1Image(np.zeros((3, 3, 3, 2, 2), np.float32), np.eye(4)), tmp_path / kind)
        return tmp_path / kind
    if kind == "one_pixel.nrrd":
        sitk.WriteImage(sitk.Image([1, 1, 1], sitk.sitkInt16), str(tmp_path / kind))
        return tmp_path / kind
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "not_dicom_folder":
        (folder / "notes.txt").write_text("no images here", encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "garbage.nii.gz",
        "garbage.png",
        "truncated.nii.gz",
        "unknown.xyz",
        "5d.nii",
        "one_pixel.nrrd",
        "empty_folder",
        "not_dicom_folder",
    ],
)
def test_bad_inputs_raise_one_line_naming_the_file(tmp_path, kind):
    path = make_bad_input(tmp_path, kind)
    with pytest.raises(ImageReadError) as caught:
        load_image(path)
    assert path.name in str(caught.value) and "\n" not in str(caught.value)


def test_rejected_masks_leave_nothing_behind(tmp_path):
    reference = MedicalImage.from_array(np.zeros((4, 5, 6), np.int16))
    out = tmp_path / "out"
    with pytest.raises(OncoSegError, match=r"\(4, 5, 7\).*\(4, 5, 6\)"):
        save_mask(np.zeros((4, 5, 7), np.uint8), reference, out / "mask.nii.gz")
    with pytest.raises(OncoSegError, match="mask.png"):
        save_mask(np.zeros((4, 5, 6), np.uint8), reference, out / "mask.png")  # PNG only for 2D
    with pytest.raises(OncoSegError, match="0-255"):
        save_mask(np.full((4, 5, 6), 300), reference, out / "mask.nii.gz")
    flat = MedicalImage.from_array(np.zeros((4, 5), np.float32))
    with pytest.raises(OncoSegError, match="image.png"):
        save_image(flat, out / "image.png")  # float pixels: Pillow fails mid-write
    assert not out.exists() or os.listdir(out) == []


def test_atomic_write_path_replaces_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_write_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".tmp-") and tmp.name.endswith(".result.json")
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("interrupted")
    assert target.read_text(encoding="utf-8") == "old" and os.listdir(tmp_path) == ["result.json"]

    with atomic_write_path(target) as tmp:
        tmp.write_text("new", encoding="utf-8")
    assert target.read_text(encoding="utf-8") == "new" and os.listdir(tmp_path) == ["result.json"]

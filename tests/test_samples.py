"""The bundled demo samples: files present, small, masks non-empty, suggested prompts around the truth."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from oncoseg.errors import OncoSegError
from oncoseg.samples import list_samples, sample_path

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "oncoseg" / "samples"
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MANIFEST = list_samples()


def read_array(path: Path) -> np.ndarray:
    """[y,x] for pictures, LPS-reoriented [z,y,x] for volumes (as the manifest's prompts assume)."""
    if path.name.endswith(".nii.gz"):
        return sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS"))
    return np.asarray(Image.open(path))


def test_manifest_lists_the_four_samples():
    assert set(MANIFEST) == {"ct_abdomen", "polyp", "breast_ultrasound", "hippocampus"}
    assert {e["modality"] for e in MANIFEST.values()} == {"ct", "endoscopy", "ultrasound", "mri"}
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    for entry in MANIFEST.values():
        assert entry["source"] and entry["licence"] and entry["ground_truth"]
        assert f"`{entry['file']}`" in readme and f"`{entry['mask']}`" in readme


def test_total_size_within_budget():
    files = [p for p in SAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) <= 2_000_000


def test_sample_path_finds_images_and_masks_and_rejects_others():
    assert sample_path("polyp") == sample_path("polyp.jpg")
    for entry in MANIFEST.values():
        assert sample_path(entry["file"]).is_file()
        assert sample_path(entry["mask"]).is_file()
    for bad in ("nope", "__init__.py", "../errors.py"):
        with pytest.raises(OncoSegError, match="unknown sample"):
            sample_path(bad)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_mask_non_empty_and_prompt_box_contains_it(name):
    entry = MANIFEST[name]
    image = read_array(sample_path(entry["file"]))
    mask = read_array(sample_path(entry["mask"])) > 0
    assert list(mask.shape) == entry["shape"]
    assert image.shape[: mask.ndim] == mask.shape
    assert mask.any()
    if mask.ndim == 3:
        z = entry["prompt"]["z"]
        assert z == int(mask.sum(axis=(1, 2)).argmax())
        mask = mask[z]
    x0, y0, x1, y1 = entry["prompt"]["box"]
    height, width = mask.shape
    assert 0 <= x0 < x1 < width and 0 <= y0 < y1 < height
    ys, xs = np.nonzero(mask)
    assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1


def test_2d_masks_are_binary_0_255():
    for name in ("polyp", "breast_ultrasound"):
        values = set(np.unique(read_array(sample_path(MANIFEST[name]["mask"]))))
        assert values == {0, 255}


def test_ct_liver_mask_shares_the_ct_geometry():
    ct = sitk.ReadImage(str(sample_path("ct_abdomen")))
    liver = sitk.ReadImage(str(sample_path("ct_abdomen_liver.nii.gz")))
    assert liver.GetSize() == ct.GetSize()
    assert np.allclose(liver.GetSpacing(), ct.GetSpacing())
    assert np.allclose(liver.GetOrigin(), ct.GetOrigin())
    assert np.allclose(liver.GetDirection(), ct.GetDirection())
    assert liver.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(liver))) == {0, 1}


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (the real datasets) is not present")
def test_samples_match_their_sources():
    ts = DATA / "totalsegmentator-example"
    assert sample_path("ct_abdomen").read_bytes() == (ts / "example_ct_sm.nii.gz").read_bytes()
    labels = json.loads((ts / "label_map_total_and_total_mr.json").read_text(encoding="utf-8"))["total"]
    liver_id = int(next(k for k, v in labels.items() if v == "liver"))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(ts / "example_seg.nii.gz")))
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_path("ct_abdomen_liver.nii.gz"))))
    assert np.array_equal(liver, (seg == liver_id).astype(np.uint8))

    polyp_id = "cju2y40d8ulqo0993q0adtgtb"
    kvasir = DATA / "kvasir-seg"
    assert polyp_id in (kvasir / "splits" / "test.txt").read_text(encoding="utf-8").split()
    assert sample_path("polyp").read_bytes() == (kvasir / "images" / f"{polyp_id}.jpg").read_bytes()
    source_mask = np.asarray(Image.open(kvasir / "masks" / f"{polyp_id}.jpg").convert("L")) > 127
    assert np.array_equal(read_array(sample_path("polyp_mask.png")) > 0, source_mask)

    busi = np.asarray(Image.open(DATA / "busi" / "benign" / "benign (184).png"))
    assert np.array_equal(read_array(sample_path("breast_ultrasound")), busi)

    hippo = DATA / "msd-task04-hippocampus"
    for folder, name in (("imagesTr", "hippocampus"), ("labelsTr", "hippocampus_label.nii.gz")):
        assert sample_path(name).read_bytes() == (hippo / folder / "hippocampus_004.nii.gz").read_bytes()

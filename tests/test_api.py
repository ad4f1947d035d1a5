"""`oncoseg.segment` end to end with the real LiteMedSAM model on the bundled samples: masks, measurements, the
files it writes (mask, overlay, JSON) and that it writes none when it fails. The module shares one `Predictor`
and encodes six images in all."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from oncoseg.api import SegmentationResult, refine, segment
from oncoseg.errors import EmptyResultError, OncoSegError, PromptError
from oncoseg.io import load_image
from oncoseg.models import Backend, ImageEmbedding, MaskPrediction
from oncoseg.predictor import Predictor
from oncoseg.samples import list_samples, sample_path
from oncoseg.volume import PropagationSettings

SAMPLES = list_samples()
IMAGE_KEYS = {
    "shape", "channels", "spacing_mm", "spacing_unit", "origin_mm", "orientation", "modality", "modality_source",
    "dtype",
}  # fmt: skip
OBJECT_KEYS = {
    "label", "score", "prompt", "volume_ml", "area_mm2", "voxel_count", "recist_long_mm", "recist_short_mm",
    "recist_slice", "long_axis_endpoints", "bbox", "bbox_mm", "centroid_mm", "max_3d_diameter_mm", "quality",
    "unit",
}  # fmt: skip
# a picture without a physical pixel size: the same fields, named in pixels
PX_OBJECT_KEYS = {
    key.replace("_mm2", "_px2").replace("_mm", "_px").replace("volume_ml", "volume_px3")
    for key in OBJECT_KEYS
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def reference(name: str) -> np.ndarray:
    return load_image(sample_path(SAMPLES[name]["mask"])).array > 0


@pytest.fixture(scope="module")
def predictor():
    return Predictor("litemedsam")


# -- 2D --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ultrasound(predictor, tmp_path_factory):
    """The breast ultrasound sample segmented from its manifest box, writing mask, overlay and JSON."""
    out = tmp_path_factory.mktemp("ultrasound")
    result = segment(
        str(sample_path("breast_ultrasound")),
        box=SAMPLES["breast_ultrasound"]["prompt"]["box"],
        predictor=predictor,
        output=out / "mask.png",
        overlay=out / "overlay.png",
        json_path=out / "result.json",
    )
    return result, out


def test_2d_result_has_one_label_its_area_and_matches_the_reference(ultrasound):
    result, _ = ultrasound
    assert isinstance(result, SegmentationResult)
    assert result.labels.dtype == np.uint8 and result.labels.shape == (487, 349)
    assert set(np.unique(result.labels)) == {0, 1}
    assert dice(result.labels == 1, reference("breast_ultrasound")) >= 0.85
    m = result.measurements[0]
    assert m.unit == "px" and m.volume_ml is None and m.area_mm2 == m.voxel_count  # a PNG has no pixel size
    entry = result.to_dict()["objects"][0]
    assert entry["unit"] == "px" and entry["area_px2"] == m.voxel_count and "area_mm2" not in entry
    assert m.voxel_count == int((result.labels == 1).sum())
    assert np.isfinite(result.scores[0]) and result.slices == [None]


def test_2d_outputs_are_written_and_reload_equal(ultrasound):
    result, out = ultrasound
    assert sorted(p.name for p in out.iterdir()) == [
        "mask.png",
        "overlay.png",
        "result.json",
    ]  # no temp files
    np.testing.assert_array_equal(
        load_image(out / "mask.png").array, result.labels * 255
    )  # one object: 0/255
    assert json.loads((out / "result.json").read_text(encoding="utf-8")) == json.loads(
        json.dumps(result.to_dict())
    )


def test_overlay_tints_the_mask_and_leaves_the_rest_of_the_image(ultrasound, predictor):
    result, out = ultrasound
    with Image.open(out / "overlay.png") as picture:
        assert picture.mode == "RGB" and picture.size == (349, 487)
        overlay = np.asarray(picture).astype(int)
    plain = (np.clip(predictor.slice_pixels(None), 0, 1) * 255).astype(np.uint8).astype(int)
    inside = result.labels == 1
    changed = (overlay != plain).any(axis=2)
    assert changed[inside].mean() > 0.99
    assert (overlay[inside][:, 0] >= plain[inside][:, 0]).all()  # tinted towards red
    assert changed[~inside].mean() < 0.01  # outside: only the long-axis line


@pytest.fixture(scope="module")
def polyp_four(predictor):
    """The polyp and three small boxes near the corners as four box strings (four objects). The corners
    themselves are black (constant) and give "nothing found", so the boxes sit on textured mucosa."""
    boxes = [
        ",".join(map(str, SAMPLES["polyp"]["prompt"]["box"])),
        "60,20,100,60",
        "520,20,560,60",
        "60,460,100,500",
    ]
    return segment(sample_path("polyp"), box=boxes, predictor=predictor), boxes


def test_several_boxes_give_labels_in_prompt_order(polyp_four, tmp_path):
    result, boxes = polyp_four
    assert result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) == {0, 1, 2, 3, 4}
    assert dice(result.labels == 1, reference("polyp")) >= 0.85
    assert (result.labels[20:61, 60:101] == 2).any() and (result.labels[20:61, 520:561] == 3).any()
    assert (result.labels[460:501, 60:101] == 4).any()
    assert len(result.measurements) == len(result.scores) == 4
    assert result.measurements[0].area_mm2 > 10 * result.measurements[1].area_mm2
    objects = result.to_dict()["objects"]
    assert [o["label"] for o in objects] == [1, 2, 3, 4]
    assert [o["prompt"]["box"] for o in objects] == [[float(v) for v in b.split(",")] for b in boxes]
    result.save(tmp_path / "labels.png")  # several labels are written as they are
    np.testing.assert_array_equal(load_image(tmp_path / "labels.png").array, result.labels)


def test_one_click_per_object_gives_one_label_each_as_the_cli_objects_do(predictor):
    """objects=[{...}, ...] is the API's --object: two single clicks are two objects, while the same two clicks
    as points= are one object."""
    polyp = (286, 288)  # the middle of the polyp
    result = segment(
        sample_path("polyp"),
        objects=[{"points": [polyp]}, {"name": "mucosa", "points": (80, 40)}, {"box": "520,20,560,60"}],
        predictor=predictor,
    )
    assert set(np.unique(result.labels)) == {0, 1, 2, 3}
    assert dice(result.labels == 1, reference("polyp")) >= 0.85
    assert result.labels[40, 80] == 2 and (result.labels[20:61, 520:561] == 3).any()
    assert [o["prompt"] for o in result.to_dict()["objects"]] == [
        {"points": [[286.0, 288.0, 1]]},
        {"points": [[80.0, 40.0, 1]]},
        {"box": [520.0, 20.0, 560.0, 60.0]},
    ]
    together = segment(sample_path("polyp"), points=[polyp, (80, 40)], predictor=predictor)
    assert set(np.unique(together.labels)) == {0, 1}  # points= are clicks on one object
    with pytest.raises(PromptError, match="unknown object key"):
        segment(sample_path("polyp"), objects=[{"point": polyp}], predictor=predictor)


def test_spacing_gives_a_picture_millimetres_and_a_volume_refuses_it(predictor):
    box = SAMPLES["polyp"]["prompt"]["box"]
    result = segment(sample_path("polyp"), box=box, spacing=(0.5, 0.25), predictor=predictor)
    m = result.measurements[0]
    assert m.unit == "mm" and m.area_mm2 == pytest.approx(m.voxel_count * 0.125)
    entry = result.to_dict()["objects"][0]
    assert entry["unit"] == "mm" and entry["area_mm2"] == pytest.approx(m.voxel_count * 0.125, abs=0.01)
    assert "mm²" in m.text() and " mm" in m.text()
    with pytest.raises(OncoSegError, match="has its own spacing"):
        segment(sample_path("ct_abdomen"), box=[14, 16, 80, 76, 24], spacing="1,1,1", predictor=predictor)


def test_to_dict_is_json_with_only_the_documented_fields(polyp_four):
    result, _ = polyp_four
    summary = result.to_dict()
    text = json.dumps(summary)
    assert set(summary) == {"image", "objects", "warnings"} and summary["warnings"] == []
    assert set(summary["image"]) == IMAGE_KEYS
    assert all(set(o) == PX_OBJECT_KEYS for o in summary["objects"])
    assert summary["image"]["spacing_unit"] == "px" and summary["image"]["modality_source"] == "guessed"
    assert all(
        set(o["quality"]) == {"estimate", "review", "reasons", "review_slices"} for o in summary["objects"]
    )
    assert "polyp" not in text and "/" not in text  # no file name or path
    assert summary["image"]["shape"] == [529, 617] and summary["image"]["channels"] == 3


def test_refining_with_the_original_box_gives_the_saved_png_mask_back(ultrasound, predictor, tmp_path):
    """A saved one-object PNG (0/255) is label 1 again; a box correction on a 2D image is the box's mask."""
    result, out = ultrasound
    box = SAMPLES["breast_ultrasound"]["prompt"]["box"]
    again = refine(sample_path("breast_ultrasound"), out / "mask.png", box=box, predictor=predictor)
    np.testing.assert_array_equal(again.labels, result.labels)
    x0, y0, x1, y1 = box
    smaller = refine(sample_path("breast_ultrasound"), out / "mask.png", box=(x0, y0, (x0 + x1) // 2, y1),
                     predictor=predictor, output=tmp_path / "fixed.png")  # fmt: skip
    assert 0 < smaller.measurements[0].voxel_count < result.measurements[0].voxel_count
    assert not smaller.labels[:, (x0 + x1) // 2 + 20 :].any()
    np.testing.assert_array_equal(load_image(tmp_path / "fixed.png").array, smaller.labels * 255)


def test_refine_corrects_one_label_and_keeps_the_others(polyp_four, predictor):
    result, _ = polyp_four
    labels = np.where(result.labels == 2, 7, result.labels)  # labels 1, 3, 4, 7: numbers are kept
    fixed = refine(sample_path("polyp"), labels, box="60,20,90,50", label=7, predictor=predictor)
    for value in (1, 3, 4):
        np.testing.assert_array_equal(fixed.labels == value, labels == value)
    assert set(np.unique(fixed.labels)) == {0, 1, 3, 4, 7}
    assert not np.array_equal(fixed.labels == 7, labels == 7)
    ys, xs = np.nonzero(fixed.labels == 7)  # the new box's object: x 60..90, y 20..50, give or take 10 pixels
    assert xs.min() >= 50 and xs.max() <= 100 and ys.min() >= 10 and ys.max() <= 60
    assert len(xs) < (labels == 7).sum()
    assert [o["label"] for o in fixed.to_dict()["objects"]] == [1, 3, 4, 7]


@pytest.mark.parametrize(
    "labels, kwargs, words",
    [
        ("two", {}, "the mask holds labels 1, 2: say which to correct (--label N)"),
        ("two", {"label": 3}, "label 3 is not in the mask (labels 1, 2)"),
        ("none", {}, "the mask holds no object"),
        ("half", {}, "non-integer values"),
        ("small", {}, "mask shape (10, 10) does not match the image's (64, 64)"),
        ("one", {"volume": True}, "needs a volume"),
        ("one", {"points": ["70,5"]}, "outside the image"),
    ],
)
def test_bad_refine_requests_raise_before_the_model_and_write_nothing(labels, kwargs, words, tmp_path):
    masks = {"one": np.zeros((64, 64), np.uint8), "small": np.zeros((10, 10), np.uint8)}
    masks["one"][10:20, 10:20] = 1
    masks["two"] = masks["one"] + (np.arange(64)[None, :] > 50).astype(np.uint8) * 2
    masks["none"], masks["half"] = masks["one"] * 0, masks["one"] * 0.5
    kwargs = {"points": ["15,15"], **kwargs}

    def no_model():
        raise AssertionError("the model was built before the request was checked")

    with pytest.raises(OncoSegError) as info:
        refine(
            np.ones((64, 64), np.float32),
            masks[labels],
            predictor=no_model,
            output=tmp_path / "m.png",
            **kwargs,
        )
    assert words in str(info.value)
    assert list(tmp_path.iterdir()) == []


# -- 3D --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct(predictor, tmp_path_factory):
    """The CT sample propagated from its manifest box one slice each way, written as NIfTI."""
    out = tmp_path_factory.mktemp("ct") / "liver.nii.gz"
    prompt = SAMPLES["ct_abdomen"]["prompt"]
    visited = []
    result = segment(
        sample_path("ct_abdomen"),
        box=[*prompt["box"], prompt["z"]],
        volume=True,
        predictor=predictor,
        propagation=PropagationSettings(max_slices=1),
        output=out,
        on_slice=visited.append,
    )
    return result, out, visited


def test_3d_propagation_covers_several_slices_and_measures_volume(ct):
    result, _, visited = ct
    z = SAMPLES["ct_abdomen"]["prompt"]["z"]
    assert result.labels.shape == (30, 101, 122) and result.labels.dtype == np.uint8
    covered = np.nonzero(result.labels.any(axis=(1, 2)))[0].tolist()
    assert covered == [z - 1, z, z + 1] and sorted(visited) == covered
    assert result.slices == [(z - 1, z + 1)]
    truth = reference("ct_abdomen")
    assert dice(result.labels[covered] > 0, truth[covered]) >= 0.85
    m = result.measurements[0]
    assert m.area_mm2 is None and m.volume_ml > 0 and m.unit == "mm"
    assert m.volume_ml == pytest.approx(m.voxel_count * 27 / 1000)  # 3 mm voxels
    assert set(result.to_dict()["objects"][0]) == {
        *OBJECT_KEYS,
        "slices",
    }  # a NIfTI has a physical voxel size: mm
    assert result.to_dict()["objects"][0]["slices"] == [z - 1, z + 1]


def test_3d_mask_file_has_the_source_geometry(ct):
    result, out, _ = ct
    source, written = sitk.ReadImage(str(sample_path("ct_abdomen"))), sitk.ReadImage(str(out))
    assert written.GetSize() == source.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing())
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-6)
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(load_image(out).array, result.labels)  # read back in LPS: the same voxels


def test_3d_overlay_shows_the_slice_where_the_object_is_largest(ct, tmp_path):
    result, _, _ = ct
    path = result.save_overlay(tmp_path / "overlay.png")
    with Image.open(path) as picture:
        # 122 x 101 pixels, enlarged 4x (the whole factor that reaches 384 px) so a person can see it
        assert picture.mode == "RGB" and picture.size == (122 * 4, 101 * 4)


def test_a_png_mask_for_a_volume_is_refused_and_nothing_written(ct, tmp_path):
    result, _, _ = ct
    with pytest.raises(OncoSegError, match=r"x\.png: cannot write this file type here"):
        result.save(tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


# -- failures write nothing ------------------------------------------------------------------------------------


class BlankBackend(Backend):
    """A backend that finds nothing anywhere: the real LiteMedSAM always paints something inside a prompt, so an
    empty result (which a fine-tuned or SAM3 model can return) is produced through the public backend interface."""

    name = "blank"

    def encode(self, image):
        return ImageEmbedding(None, image.shape[:2], image.shape[:2], self.name)

    def decode(self, embedding, prompts, mask_input=None):
        h, w = embedding.original_size
        return MaskPrediction(np.zeros((len(prompts), h, w), bool), np.zeros(len(prompts), np.float32))


def test_empty_result_raises_and_writes_nothing(tmp_path):
    with pytest.raises(EmptyResultError, match="found nothing for object 1"):
        segment(
            np.zeros((64, 64), np.float32),
            box=(10, 10, 40, 40),
            predictor=Predictor(BlankBackend()),
            output=tmp_path / "mask.png",
            overlay=tmp_path / "overlay.png",
            json_path=tmp_path / "result.json",
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"box": (148, 160, 617, 416)}, PromptError, "outside the image"),
        ({"box": "148,160,148,416"}, PromptError, "zero area"),
        ({"box": (148, 160, 424, 416, 3)}, PromptError, "2D image"),
        ({"box": [(1, 1, 50, 50), (60, 60, 90, 90)], "points": ["5,5"]}, PromptError, "at most one box"),
        ({}, PromptError, "no prompt"),
        ({"box": (148, 160, 424, 416), "volume": True}, OncoSegError, "needs a volume"),
        ({"box": (148, 160, 424, 416), "backend": "nonesuch"}, OncoSegError, "unknown backend 'nonesuch'"),
    ],
)
def test_bad_requests_raise_one_line_and_write_nothing(kwargs, error, words, tmp_path):
    with pytest.raises(error, match="^[^\n]+$") as info:
        segment(sample_path("polyp"), output=tmp_path / "mask.png", overlay=tmp_path / "o.png", **kwargs)
    assert words in str(info.value)
    assert list(tmp_path.iterdir()) == []

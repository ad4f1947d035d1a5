"""Modality normalisers, channel selection and `normalize_for_sam`."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from monai.data import MetaTensor
from monai.transforms import Compose

from oncoseg.errors import OncoSegError
from oncoseg.preprocess import (
    CT_WINDOWS,
    MODALITIES,
    NORMALIZERS,
    NormalizeCT,
    NormalizeCTd,
    NormalizeCXR,
    NormalizeCXRd,
    NormalizeDermoscopyd,
    NormalizeEndoscopyd,
    NormalizeMammod,
    NormalizeMRI,
    NormalizeMRId,
    NormalizePET,
    NormalizePETd,
    NormalizeSRH,
    NormalizeSRHd,
    NormalizeUltrasoundd,
    NormalizeXRayd,
    SelectMedicalChannels,
    SelectMedicalChannelsd,
    canonical_modality,
    get_normalizer,
    normalize_for_sam,
    percentile_bounds,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
BRATS_CASE = DATA / "brats2015-samples" / "brats_2013_pat0001_1"

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")
modest = settings(max_examples=50, deadline=None)

# Channel-first images: 1-3 channels, 2D or 3D, tiny spatial sizes.
shapes = st.builds(
    lambda channels, spatial: (channels, *spatial),
    st.integers(1, 3),
    hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=5),
)


def images(allow_non_finite: bool = False) -> st.SearchStrategy[np.ndarray]:
    def for_dtype(dtype: type) -> st.SearchStrategy[np.ndarray]:
        width = 32 if dtype is np.float32 else 64
        elements = st.floats(allow_nan=allow_non_finite, allow_infinity=allow_non_finite, width=width)
        return hnp.arrays(dtype, shapes, elements=elements)

    return st.sampled_from([np.float32, np.float64]).flatmap(for_dtype)


def assert_unit_range(out: np.ndarray) -> None:
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min(initial=0.0) >= 0.0 and out.max(initial=0.0) <= 1.0


@pytest.mark.parametrize("modality", MODALITIES)
@modest
@given(image=images())
def test_any_finite_image_maps_into_unit_range(modality, image):
    out = get_normalizer(modality)(image)
    assert out.shape == image.shape
    assert_unit_range(out)


@pytest.mark.parametrize("modality", MODALITIES)
@modest
@given(image=images(allow_non_finite=True))
def test_nan_and_inf_give_finite_output(modality, image):
    assert_unit_range(get_normalizer(modality)(image))


@pytest.mark.parametrize("modality", MODALITIES)
@modest
@given(image=images())
def test_order_of_values_is_kept_within_a_channel(modality, image):
    out = get_normalizer(modality)(image)
    for before, after in zip(image, out):
        order = np.argsort(before, axis=None, kind="stable")
        assert np.all(np.diff(after.ravel()[order]) >= 0)


@modest
@given(a=hnp.arrays(np.float64, shapes, elements=st.floats(-5000, 5000)), extra=st.floats(0, 5000))
def test_ct_is_monotone_across_images(a, extra):
    b = a + extra
    assert np.all(NormalizeCT()(a) <= NormalizeCT()(b))


@pytest.mark.parametrize("extreme", [1e30, 1e300, np.finfo(np.float64).max, 1e-300])
@pytest.mark.parametrize("modality", MODALITIES)
def test_extreme_magnitudes(modality, extreme):
    image = np.sort(np.array([[[-extreme, -1.0, 0.0, 1.0, extreme]]]))
    out = get_normalizer(modality)(image)
    assert_unit_range(out)
    if modality != "ct":
        assert out[0, 0, -1] == 1.0 and out[0, 0, 0] == 0.0


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("value", [0.0, -7.5, 1e30])
def test_constant_image_gives_zeros_without_warnings(modality, value):
    image = np.full((3, 4, 5), value)
    expected = NormalizeCT()(image) if modality == "ct" else np.zeros_like(image)
    np.testing.assert_array_equal(get_normalizer(modality)(image), expected)


@pytest.mark.parametrize("modality", MODALITIES)
def test_all_nan_image_gives_zeros(modality):
    out = get_normalizer(modality)(np.full((2, 3, 3), np.nan))
    np.testing.assert_array_equal(out, np.zeros((2, 3, 3), np.float32))


@pytest.mark.parametrize("modality", ["mri", "dermoscopy", "endoscopy", "srh"])
def test_per_channel_normalisers_zero_only_the_constant_channel(modality):
    image = np.stack([np.full((4, 4), 3.0), np.arange(16.0).reshape(4, 4)])
    out = get_normalizer(modality)(image)
    assert np.all(out[0] == 0.0)
    assert out[1].min() == 0.0 and out[1].max() == 1.0


def test_ct_window_arithmetic_is_exact():
    out = NormalizeCT()(np.array([[-3000.0, -1000.0, -500.0, 0.0, 500.0, 1000.0, 3000.0]]))
    np.testing.assert_array_equal(out, np.array([[0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]], np.float32))


@pytest.mark.parametrize(
    ("preset", "level", "width"),
    [
        ("soft_tissue", 40, 400),
        ("lung", -600, 1500),
        ("bone", 400, 1800),
        ("liver", 30, 150),
        ("brain", 40, 80),
    ],
)
def test_ct_presets_centre_on_their_level(preset, level, width):
    assert CT_WINDOWS[preset] == (level - width / 2, level + width / 2)
    out = NormalizeCT(preset)(np.array([[level - width, level, level + width / 2]], dtype=np.int16))
    np.testing.assert_array_equal(out, np.array([[0.0, 0.5, 1.0]], np.float32))


def test_ct_maps_nan_and_inf_to_window_ends():
    out = NormalizeCT()(np.array([[np.nan, np.inf, -np.inf]]))
    np.testing.assert_array_equal(out, np.array([[0.0, 1.0, 0.0]], np.float32))


def test_mri_clips_to_1st_and_99th_percentile_per_channel():
    ramp = np.arange(101.0)  # its k-th percentile is k
    image = np.stack([ramp, 10 * ramp + 5])
    expected = np.clip((ramp - 1) / 98, 0, 1)
    out = NormalizeMRI()(image)
    np.testing.assert_allclose(out[0], expected, atol=1e-7)
    np.testing.assert_allclose(out[1], expected, atol=1e-7)


def test_pet_replaces_nan_and_inf_and_floors_suv_at_zero():
    image = np.array([[-5.0, 0.0, 5.0, 10.0, np.nan, np.inf, -np.inf]])
    out = NormalizePET(lower=0, upper=100)(image)
    np.testing.assert_array_equal(out, np.array([[0.0, 0.0, 0.5, 1.0, 0.0, 1.0, 0.0]], np.float32))


def test_srh_is_log_then_min_max():
    logs = np.array([0.0, 1.0, 2.0])
    lipids = np.expm1(logs)
    image = np.stack([lipids, lipids - 1.0])  # second channel: negative minimum is shifted to 0 first
    out = NormalizeSRH()(image)
    np.testing.assert_allclose(out, np.stack([logs / 2, logs / 2]), atol=1e-7)


def test_cxr_gamma_is_applied_after_the_percentile_window():
    image = np.random.default_rng(0).normal(size=(1, 16, 16))
    plain = NormalizeCXR()(image)
    np.testing.assert_allclose(NormalizeCXR(gamma=0.5)(image), np.sqrt(plain), atol=1e-6)


def test_percentiles_on_a_large_volume_use_a_subsample_close_to_the_full_one():
    volume = np.random.default_rng(1).normal(100.0, 20.0, size=(1, 64, 256, 256))
    low, high = percentile_bounds(volume, 1, 99)
    full_low, full_high = np.percentile(volume, [1, 99])
    assert abs(low - full_low) < 0.5 and abs(high - full_high) < 0.5
    assert percentile_bounds(volume, 1, 99) == (low, high)


@pytest.mark.parametrize("modality", ["ultrasound", "xray", "pet", "mammography", "cxr"])
def test_whole_image_percentiles_on_a_large_image_sample_every_channel(modality):
    image = np.zeros((3, 700, 700))
    image[1] = np.linspace(0.0, 100.0, 700)  # only the middle channel is bright
    out = get_normalizer(modality)(image)
    assert out[1].max() == 1.0 and out[1, :, 350].min() > 0.3


def test_torch_tensors_stay_tensors_and_become_float32():
    image = torch.tensor([[[-1000, 0, 1000]]], dtype=torch.int16)
    out = NormalizeCT()(image)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[[0.0, 0.5, 1.0]]]))
    out = NormalizeMRI()(torch.arange(101.0).reshape(1, 101))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and float(out.max()) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [{"lower": 50, "upper": 10}, {"lower": -1, "upper": 99}, {"lower": 1, "upper": 101}],
)
def test_bad_percentiles_are_rejected(kwargs):
    with pytest.raises(OncoSegError, match="percentiles"):
        NormalizeMRI(**kwargs)


def test_bad_ct_windows_and_shapes_are_rejected():
    with pytest.raises(OncoSegError, match="soft_tissue"):
        NormalizeCT("abdomen")
    with pytest.raises(OncoSegError, match="low < high"):
        NormalizeCT((100, 100))
    with pytest.raises(OncoSegError, match="channel-first"):
        NormalizeCT()(np.zeros(5))
    with pytest.raises(OncoSegError, match="gamma"):
        NormalizeCXR(gamma=0)


def constant_channels(count: int) -> np.ndarray:
    """Channel i filled with the value 10 * i (shape (count, 2, 3, 3))."""
    return np.stack([np.full((2, 3, 3), 10.0 * i) for i in range(count)])


@pytest.mark.parametrize(
    ("mode", "count", "expected"),
    [
        ("t1_t1gd_flair", 4, [10, 20, 0]),  # BraTS FLAIR, T1w, T1gd, T2w -> T1w, T1gd, FLAIR
        ("t1_t1gd_flair", 3, [0, 10, 20]),
        ("t1_t1gd_flair", 2, [0, 10, 10]),  # SRH lipids, proteins -> lipids, proteins, proteins
        ("t1_t1gd_flair", 1, [0, 0, 0]),
        ("flair_t1c", 2, [10, 10, 0]),  # FLAIR, T1c -> T1c, T1c, FLAIR
    ],
)
def test_select_medical_channels_order(mode, count, expected):
    out = SelectMedicalChannels(mode)(constant_channels(count))
    assert out.shape == (3, 2, 3, 3)
    assert [float(np.unique(channel).item()) for channel in out] == expected
    tensor_out = SelectMedicalChannels(mode)(torch.from_numpy(constant_channels(count)))
    assert isinstance(tensor_out, torch.Tensor)
    np.testing.assert_array_equal(tensor_out.numpy(), out)


@pytest.mark.parametrize(("mode", "count"), [("t1_t1gd_flair", 5), ("t1_t1gd_flair", 0), ("flair_t1c", 4)])
def test_select_medical_channels_rejects_other_counts(mode, count):
    with pytest.raises(OncoSegError, match=f"got {count}"):
        SelectMedicalChannels(mode)(np.zeros((count, 4, 4)))


def test_select_medical_channels_rejects_unknown_mode():
    with pytest.raises(OncoSegError, match="flair_t1c"):
        SelectMedicalChannels("t2_only")


DICT_TWINS = [
    NormalizeCTd,
    NormalizeMRId,
    NormalizeUltrasoundd,
    NormalizeDermoscopyd,
    NormalizeEndoscopyd,
    NormalizeXRayd,
    NormalizePETd,
    NormalizeMammod,
    NormalizeCXRd,
    NormalizeSRHd,
]


@pytest.mark.parametrize(("twin", "modality"), list(zip(DICT_TWINS, MODALITIES)))
def test_dict_twins_match_array_transforms_in_compose(twin, modality):
    assert twin.transform_class is NORMALIZERS[modality]
    image = np.random.default_rng(2).normal(50.0, 30.0, size=(4, 6, 7))
    label = np.zeros((1, 6, 7), np.uint8)
    pipeline = Compose([twin(keys="image"), SelectMedicalChannelsd(keys="image")])
    out = pipeline({"image": image, "label": label})
    expected = SelectMedicalChannels()(get_normalizer(modality)(image))
    np.testing.assert_array_equal(out["image"], expected)
    assert out["label"] is label


def test_meta_tensors_keep_their_metadata_and_the_input_is_not_changed():
    image = MetaTensor(torch.tensor([[[-1000.0, 0.0, 1000.0]]]), meta={"filename_or_obj": "ct.nii.gz"})
    out = Compose([NormalizeCTd(keys="image"), SelectMedicalChannelsd(keys="image")])({"image": image})[
        "image"
    ]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "ct.nii.gz"
    assert out.shape == (3, 1, 3) and torch.equal(out[2], torch.tensor([[0.0, 0.5, 1.0]]))
    assert torch.equal(
        image, torch.tensor([[[-1000.0, 0.0, 1000.0]]])
    )  # a float32 input is copied, not reused


def test_inference_and_training_do_not_import_monai():
    """MONAI's import takes about 10 s and 0.3 GB (it loads transformers and torchvision): the CLI, the service,
    the predictor, evaluation and training's loss (every DDP worker) must not pay it."""
    code = (
        "import sys, torch, oncoseg.api, oncoseg.cli, oncoseg.predictor, oncoseg.service.app\n"
        "import oncoseg.evaluate.runner, oncoseg.train.samples\n"
        "from oncoseg.train.losses import ModalityLoss\n"
        "ModalityLoss()(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8), ['ct', 'endoscopy'])\n"
        "assert 'monai' not in sys.modules, 'monai imported'\n"
    )  # (the dictionary twins, which do load MONAI, are imported at the top of this module)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dict_twin_passes_options_and_handles_missing_keys():
    data = {"ct": torch.tensor([[[-600.0]]])}
    out = NormalizeCTd(keys=["ct", "pet"], window="lung", allow_missing_keys=True)(data)
    assert out["ct"].item() == 0.5 and "pet" not in out


def test_modalities_and_aliases():
    assert MODALITIES == (
        "ct", "mri", "ultrasound", "dermoscopy", "endoscopy", "xray", "pet", "mammography", "cxr", "srh"
    )  # fmt: skip
    aliases = {
        "CT": "ct", "MR": "mri", "mri": "mri", "US": "ultrasound", "colonoscopy": "endoscopy",
        "mammo": "mammography", "MG": "mammography", "chest_xray": "cxr", "Chest X-Ray": "cxr", "x-ray": "xray",
        "X_RAY": "xray", "PT": "pet", "Dermatoscopy": "dermoscopy", "SRH": "srh",
    }  # fmt: skip
    for name, canonical in aliases.items():
        assert canonical_modality(name) == canonical
    with pytest.raises(OncoSegError, match="ct, mri, ultrasound"):
        canonical_modality("spect")


def test_get_normalizer_passes_options():
    normalizer = get_normalizer("MR", lower=2, upper=98)
    assert isinstance(normalizer, NormalizeMRI) and (normalizer.lower, normalizer.upper) == (2, 98)
    assert get_normalizer("ct", window="bone").window == CT_WINDOWS["bone"]


def test_normalize_for_sam_layouts():
    rng = np.random.default_rng(3)
    ct = rng.integers(-1024, 2000, size=(5, 8, 9)).astype(np.int16)
    out = normalize_for_sam(ct, "CT", channel_axis=None)
    assert out.shape == (5, 8, 9, 3) and out.dtype == np.float32 and out.flags.c_contiguous
    expected = NormalizeCT()(ct[None])[0]
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)

    rgb = rng.integers(0, 256, size=(8, 9, 3)).astype(np.uint8)
    out = normalize_for_sam(rgb, "colonoscopy")
    assert out.shape == (8, 9, 3)
    np.testing.assert_array_equal(
        out, np.moveaxis(get_normalizer("endoscopy")(np.moveaxis(rgb, -1, 0)), 0, -1)
    )

    brats = np.stack([np.full((2, 4, 4), float(i)) for i in range(4)], axis=-1)
    brats[0, 0, 0] = 100.0  # so no channel is constant
    out = normalize_for_sam(brats, "mri")
    np.testing.assert_array_equal(
        out[..., 2], normalize_for_sam(brats[..., 0], "mri", channel_axis=None)[..., 0]
    )

    srh = np.stack([np.arange(16.0).reshape(4, 4), 2 * np.arange(16.0).reshape(4, 4) + 1], axis=0)
    out = normalize_for_sam(srh, "srh", channel_axis=0)
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


def test_normalize_for_sam_uses_one_mapping_for_the_whole_volume():
    volume = np.stack([np.linspace(0, 10, 100).reshape(10, 10), np.linspace(0, 1000, 100).reshape(10, 10)])
    out = normalize_for_sam(volume, "mri", channel_axis=None)
    assert out[0].max() < 0.02  # the dark slice stays dark: it is not rescaled on its own
    assert out[1].max() == 1.0


def test_normalize_for_sam_rejects_bad_layouts():
    with pytest.raises(OncoSegError, match="2D or 3D.*channel_axis=None"):
        normalize_for_sam(np.zeros((16, 16)), "ultrasound")  # greyscale without channel_axis=None
    with pytest.raises(OncoSegError, match="16 channels.*channel_axis=None"):
        normalize_for_sam(np.zeros((16, 16, 16)), "ct")
    with pytest.raises(OncoSegError, match="2D or 3D"):
        normalize_for_sam(np.zeros(16), "ct", channel_axis=None)
    with pytest.raises(OncoSegError, match="outside"):
        normalize_for_sam(np.zeros((4, 4)), "ct", channel_axis=2)
    with pytest.raises(OncoSegError, match="unknown modality"):
        normalize_for_sam(np.zeros((4, 4)), "sonar", channel_axis=None)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data folder {DATA} is absent")
def test_real_brats_flair_t1c_case():
    def load(name: str) -> np.ndarray:
        array = nib.load(BRATS_CASE / f"{name}_subtrMeanDivStd.nii.gz").get_fdata(dtype=np.float32)
        return np.ascontiguousarray(array.transpose(2, 1, 0))  # nibabel [x, y, z] -> [z, y, x]

    flair, t1c = load("Flair"), load("T1c")
    out = normalize_for_sam(np.stack([flair, t1c], axis=-1), "MR")

    assert out.shape == (*flair.shape, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], NormalizeMRI()(t1c[None])[0])
    np.testing.assert_array_equal(out[..., 2], NormalizeMRI()(flair[None])[0])
    assert not np.array_equal(out[..., 0], out[..., 2])
    brain = nib.load(BRATS_CASE / "brainmask.nii.gz").get_fdata().transpose(2, 1, 0) > 0
    for c in (0, 2):
        inside = out[..., c][brain]
        assert inside.std() > 0.05 and math.isclose(inside.max(), 1.0)

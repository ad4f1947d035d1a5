"""HU-based anatomy, intensity refinement and the adapt stage of organ contouring: real CT and small synthetic
volumes."""

from __future__ import annotations

import numpy as np
import pytest

from oncoseg.contour.adapt import HU_ORGANS, METHOD_ATLAS_HU, METHOD_HU, adapt_priors, supported
from oncoseg.contour.anatomy import body, lungs, spinal_canal
from oncoseg.contour.check import dice
from oncoseg.contour.intensity import refine_by_intensity
from oncoseg.image import MedicalImage


def _image(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> MedicalImage:
    return MedicalImage(
        array=array.astype(np.int16),
        spacing=spacing,
        origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        modality="ct",
    )


def _disk(shape, centre, radius) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def small_ct(shared_data):
    from oncoseg.contour.organs import load_atlas

    return load_atlas(shared_data / "totalsegmentator-example")


def test_real_lungs_are_split_left_and_right(small_ct):
    """On the 3 mm example CT the lung bases are found, left on the patient's left (+x, where the spleen is)."""
    found = lungs(small_ct.image)
    left = small_ct.mask("Lung_LUL") | small_ct.mask("Lung_LLL")
    right = small_ct.mask("Lung_RML") | small_ct.mask("Lung_RLL")
    assert dice(found["Lung_L"], left) > 0.9
    assert dice(found["Lung_R"], right) > 0.9
    spleen_x = np.nonzero(small_ct.mask("Spleen"))[2].mean()
    liver_x = np.nonzero(small_ct.mask("Liver"))[2].mean()
    left_x = np.nonzero(found["Lung_L"])[2].mean()
    assert abs(left_x - spleen_x) < abs(left_x - liver_x)
    assert not (found["Lung_L"] & found["Lung_R"]).any()
    assert np.array_equal(found["Lungs"], found["Lung_L"] | found["Lung_R"])
    # the gas in the stomach and colon is not lung
    assert not (found["Lungs"] & (small_ct.mask("Stomach") | small_ct.mask("Colon"))).any()


def test_real_body_holds_every_label_and_canal_holds_the_cord(small_ct):
    outline = body(small_ct.image)
    assert outline[small_ct.labels.array > 0].all()
    assert outline.mean() < 0.9  # the air around the patient is not body
    cord = small_ct.mask("SpinalCord")
    canal = spinal_canal(small_ct.image, outline=outline)
    assert (canal & cord).sum() / cord.sum() > 0.75
    assert canal.any(axis=(1, 2)).sum() >= 0.8 * cord.any(axis=(1, 2)).sum()


def test_gas_is_not_lung_and_a_joined_lung_is_cut_at_the_midline():
    rng = np.random.default_rng(0)
    ct = np.full((12, 80, 80), -1000.0)
    trunk = _disk((80, 80), (40, 40), 35)
    ct[:, trunk] = 40 + rng.normal(0, 10, (12, int(trunk.sum())))
    gas = _disk((80, 80), (22, 40), 6)  # a gas pocket in front
    ct[:, gas] = -1000
    lung = (
        _disk((80, 80), (50, 25), 9)
        | _disk((80, 80), (50, 55), 9)
        | ((np.abs(np.arange(80)[None, :] - 40) < 16) & (np.abs(np.arange(80)[:, None] - 50) < 3))
    )  # two lungs joined by a bridge across the midline
    ct[:, lung] = -820 + rng.normal(0, 30, (12, int(lung.sum())))
    found = lungs(_image(ct, spacing=(2.0, 2.0, 2.0)))  # 55 mL of lung: above the 10 mL minimum
    assert not (found["Lungs"] & gas[None]).any()
    assert found["Lungs"].sum() > 0.9 * 12 * lung.sum()
    assert found["Lung_L"][:, :, 41:].any() and not found["Lung_L"][:, :, :39].any()  # +x = patient left
    assert found["Lung_R"][:, :, :39].any() and not found["Lung_R"][:, :, 41:].any()


def test_spinal_canal_found_in_a_ring_with_a_gap():
    ct = np.full((6, 90, 90), -1000.0)
    ct[:, _disk((90, 90), (45, 45), 40)] = 30
    ring = _disk((90, 90), (60, 45), 12) & ~_disk((90, 90), (60, 45), 7)
    ct[:, ring] = 600
    ct[3, 70:74, 44:46] = 30  # the arch is open on one slice: a 2 mm gap
    canal = spinal_canal(_image(ct))
    hole = _disk((90, 90), (60, 45), 7)
    for z in range(6):
        assert dice(canal[z], hole) > 0.8, z


def test_intensity_refinement_moves_shifted_priors_onto_their_organs():
    """Two carried organs, each shifted by 10 mm (into the fat and into each other): the refined masks overlap
    their organs better, take no fat and do not overlap each other."""
    rng = np.random.default_rng(1)
    ct = np.full((24, 72, 72), -100.0)  # fat
    liver = np.zeros(ct.shape, bool)
    liver[2:22, 10:50, 6:40] = True
    spleen = np.zeros(ct.shape, bool)
    spleen[4:18, 20:40, 44:64] = True
    ct[liver], ct[spleen] = 60, 110
    ct += rng.normal(0, 8, ct.shape)
    priors = {"Liver": np.roll(liver, 5, axis=2), "Spleen": np.roll(spleen, -4, axis=1)}
    refined = refine_by_intensity(ct, priors, (2.0, 2.0, 2.0))
    assert dice(refined["Liver"], liver) > dice(priors["Liver"], liver) + 0.03
    assert dice(refined["Spleen"], spleen) > dice(priors["Spleen"], spleen)
    assert not (refined["Liver"] & ~liver).any() and not (refined["Spleen"] & ~spleen).any()


def test_adapt_adds_hu_organs_and_refines_the_large_ones():
    rng = np.random.default_rng(2)
    trunk = _disk((72, 72), (36, 36), 33)
    ct = np.full((20, 72, 72), -1000.0)
    ct[:, trunk] = -80 + rng.normal(0, 5, (20, int(trunk.sum())))
    organ = np.zeros(ct.shape, bool)
    organ[2:18, 16:52, 16:52] = True
    ct[organ] = 55 + rng.normal(0, 5, int(organ.sum()))
    prior = np.roll(organ, 4, axis=1)
    priors = {"Liver": prior, "Pancreas": np.zeros_like(organ), "External": np.zeros_like(organ)}
    inside = {"Liver": 1.0, "Pancreas": 0.0, "External": 0.0}
    adapted, inside, methods = adapt_priors(_image(ct, spacing=(2.0, 2.0, 2.0)), priors, inside)
    assert methods == {"Liver": METHOD_ATLAS_HU, "External": METHOD_HU}
    assert inside["External"] is None and inside["Liver"] == 1.0
    missed, wrong = organ & ~prior, prior & ~organ  # the prior misses 8 mm of the organ and takes 8 mm of fat
    assert (adapted["Liver"] & missed).sum() > 0.5 * missed.sum()
    assert not (adapted["Liver"] & wrong).any()
    assert adapted["External"][organ].all() and not adapted["External"][:, 0, 0].any()
    assert not adapted["Pancreas"].any()
    assert supported(["Liver", "Lungs"]) == ["Liver", "Lungs", *[n for n in HU_ORGANS if n != "Lungs"]]


def test_model_refines_only_where_it_won():
    from oncoseg.contour.refine import model_helps

    assert model_helps((0.98, 0.98), "Liver") and model_helps((0.98, 0.98), "A_Aorta")
    assert not model_helps((3.0, 3.0), "Liver") and model_helps((3.0, 3.0), "A_Aorta")

"""HU-based anatomy, intensity refinement and the adapt stage of organ contouring: real CT and small synthetic
volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from oncoseg.contour.adapt import (
    HU_ORGANS,
    METHOD_ATLAS_HU,
    METHOD_CANAL,
    METHOD_CONTRAST,
    METHOD_HU,
    NO_MODEL_METHODS,
    adapt_priors,
    carved_out,
    supported,
)
from oncoseg.contour.anatomy import body, lungs, spinal_canal
from oncoseg.contour.check import dice
from oncoseg.contour.intensity import refine_by_intensity
from oncoseg.contour.tubes import aorta_from_contrast, cord_in_canal
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


def _trunk_with_aorta_and_spine(aorta_hu: float, z: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CT, aorta, spinal canal) of a made-up trunk at 1 mm: fat, a vertebral ring round a CSF canal, and a
    round aorta of ``aorta_hu`` in front of it touching the vertebral body; noise of 10 HU."""
    rng = np.random.default_rng(3)
    shape = (z, 120, 120)
    ct = np.full(shape, -1000.0)
    ct[:, _disk(shape[1:], (60, 60), 58)] = -90  # fat
    body_ = _disk(shape[1:], (72, 60), 14)  # vertebral body
    ring = _disk(shape[1:], (97, 60), 11) & ~_disk(shape[1:], (97, 60), 7)
    canal = _disk(shape[1:], (97, 60), 7)
    aorta = _disk(shape[1:], (46, 64), 11)  # touches the vertebral body
    ct[:, body_ | ring] = 400
    ct[:, canal] = 15
    ct[:, aorta] = aorta_hu
    ct += rng.normal(0, 10, shape)
    return ct, np.broadcast_to(aorta, shape).copy(), np.broadcast_to(canal, shape).copy()


def test_contrast_aorta_is_found_from_a_shifted_label_and_only_with_contrast():
    """A carried aorta label 12 mm behind and half the size of a bright lumen comes back onto it; the same
    tube at unenhanced blood density (45 HU) gives no lumen, so the carried label stays."""
    ct, aorta, _ = _trunk_with_aorta_and_spine(180.0)
    carried = np.zeros_like(aorta)
    carried[:, _disk(aorta.shape[1:], (58, 64), 7)] = True
    found, why = aorta_from_contrast(ct, carried, (1.0, 1.0, 2.0))
    assert found is not None and "12 of 12 slices" in why, why
    assert dice(found, aorta) > 0.9 and dice(carried, aorta) < 0.5
    assert not (found & (ct > 300)).sum() > 0.02 * found.sum()  # not the vertebra it touches
    plain, _, _ = _trunk_with_aorta_and_spine(45.0)
    none, why = aorta_from_contrast(plain, carried, (1.0, 1.0, 2.0))
    assert none is None and why.startswith("no contrast-filled lumen"), why
    adapted, _, methods, _ = adapt_priors(_image(ct, (1.0, 1.0, 2.0)), {"A_Aorta": carried})
    assert methods["A_Aorta"] == METHOD_CONTRAST and METHOD_CONTRAST in NO_MODEL_METHODS
    assert np.array_equal(adapted["A_Aorta"], found)
    _, _, methods, _ = adapt_priors(_image(plain, (1.0, 1.0, 2.0)), {"A_Aorta": carried})
    assert "A_Aorta" not in methods  # no contrast: the carried label, refined by the model as before


def test_cord_is_moved_into_the_bony_canal():
    """A carried cord 5 mm off the canal is replaced by the canal's inner part on every slice; a canal far
    from the carried cord (another hole) is not used."""
    ct, _, canal = _trunk_with_aorta_and_spine(180.0)
    image = _image(ct, (1.0, 1.0, 2.0))
    carried = np.roll(canal, 5, axis=2) & _disk(canal.shape[1:], (97, 65), 5)
    found = spinal_canal(image)
    cord, used = cord_in_canal(carried, found, image.spacing)
    assert used == ct.shape[0]
    assert (cord <= canal).all() and dice(cord, canal) > 0.8 > dice(carried, canal)
    far = np.roll(carried, 30, axis=2)
    kept, used = cord_in_canal(far, found, image.spacing)
    assert used == 0 and np.array_equal(kept, far)
    _, _, methods, _ = adapt_priors(image, {"SpinalCord": carried})
    assert methods["SpinalCord"] == METHOD_CANAL


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


def test_trimmed_statistics_keep_a_shifted_liver_out_of_the_kidney_beside_it():
    """Non-contrast-like: liver 55 HU touching a kidney of 30 HU, noise 12 HU. A carried liver shifted 20 mm
    into the kidney has part of its core there; at the same spread, trimming the HU statistics keeps the
    refined liver out of more than half of the kidney voxels the untrimmed statistics let it take (measured
    2398 vs 5980)."""
    from oncoseg.contour.intensity import IntensitySettings

    rng = np.random.default_rng(4)
    ct = np.full((16, 80, 80), -100.0)
    liver = np.zeros(ct.shape, bool)
    liver[2:14, 10:70, 8:44] = True
    kidney = np.zeros(ct.shape, bool)
    kidney[3:13, 15:65, 44:62] = True
    ct[liver], ct[kidney] = 55, 30
    ct += rng.normal(0, 12, ct.shape)
    priors = {"Liver": np.roll(liver, 10, axis=2)}
    trimmed = refine_by_intensity(ct, priors, (2.0, 2.0, 3.0))["Liver"]
    untrimmed = refine_by_intensity(ct, priors, (2.0, 2.0, 3.0), settings=IntensitySettings(trim_rounds=0))
    assert (trimmed & kidney).sum() < 0.5 * (untrimmed["Liver"] & kidney).sum()
    assert dice(trimmed, liver) > dice(untrimmed["Liver"], liver) + 0.03


def test_stomach_takes_its_own_gas_not_the_bowel_gas_beside_it_nor_the_lung():
    """A stomach whose front third is gas (carried label shifted 12 mm), a gas-filled bowel loop touching it
    outside the carried label, and a lung piece at the carried label's edge: the refined stomach takes its gas,
    not the bowel's or the lung's."""
    rng = np.random.default_rng(5)
    ct = np.full((12, 80, 80), -100.0)
    stomach = np.zeros(ct.shape, bool)
    stomach[2:10, 20:50, 20:50] = True
    ct[stomach] = 30
    gas = stomach.copy()
    gas[:, 30:, :] = False
    ct[gas] = -900
    bowel = np.zeros(ct.shape, bool)
    bowel[2:10, 20:34, 52:66] = True
    ct[bowel] = -900
    lung = np.zeros(ct.shape, bool)
    lung[2:10, 52:60, 20:30] = True
    ct[lung] = -850
    ct += rng.normal(0, 8, ct.shape)
    prior = np.roll(stomach, 6, axis=1)
    out = refine_by_intensity(ct, {"Stomach": prior}, (2.0, 2.0, 2.0), not_gas=lung)["Stomach"]
    assert (out & gas).sum() > 0.9 * gas.sum()
    assert not (out & bowel).any(), (out & bowel).sum()
    assert not (out & lung).any(), (out & lung).sum()
    assert dice(out, stomach) > dice(prior, stomach) + 0.05, (dice(out, stomach), dice(prior, stomach))


def test_an_organ_does_not_keep_a_neighbour_of_its_density_joined_by_a_thin_bridge():
    """A spleen whose carried label also covers a kidney of the same density (the atlas had no kidney), the two
    touching through an 8 mm bridge: the refined spleen keeps the spleen and drops the kidney; without the
    bridge rule (body_mm tiny) it would take both."""
    from oncoseg.contour.intensity import IntensitySettings

    rng = np.random.default_rng(7)
    ct = np.full((24, 90, 90), -100.0)
    z, y, x = np.ogrid[:24, :90, :90]
    spleen = ((z - 12) / 9.0) ** 2 + ((y - 40) / 22.0) ** 2 + ((x - 35) / 16.0) ** 2 <= 1
    kidney = ((z - 12) / 6.0) ** 2 + ((y - 45) / 10.0) ** 2 + ((x - 70) / 8.0) ** 2 <= 1
    bridge = np.zeros(ct.shape, bool)
    bridge[10:14, 43:47, 45:66] = True
    ct[spleen | kidney | bridge] = 45
    ct += rng.normal(0, 6, ct.shape)
    prior = ndimage.binary_dilation(spleen | kidney, iterations=2)  # a carried label over both
    out = refine_by_intensity(ct, {"Spleen": prior}, (2.0, 2.0, 2.0))["Spleen"]
    assert (out & spleen).sum() > 0.75 * spleen.sum()  # its blurred rim stays out
    assert (out & kidney).sum() < 0.05 * kidney.sum(), (out & kidney).sum()
    loose = refine_by_intensity(
        ct, {"Spleen": prior}, (2.0, 2.0, 2.0), settings=IntensitySettings(body_mm=0.1)
    )
    assert (loose["Spleen"] & kidney).sum() > 0.5 * kidney.sum()  # the rule, not the growth, drops the kidney


def test_a_kidney_carved_from_the_spleen_is_weak_evidence_and_the_spleen_takes_it_back():
    """A carried kidney over spleen tissue (no kidney in the scan) is fitted to a piece of the spleen: it is
    reported weak (not to be drawn) and the spleen is fitted again without it. A real kidney, parted from the
    spleen by fat, is not."""
    rng = np.random.default_rng(3)
    ct = np.full((20, 80, 80), -100.0)
    spleen = np.zeros(ct.shape, bool)
    spleen[2:18, 10:60, 10:50] = True
    ct[spleen] = 50
    ct += rng.normal(0, 5, ct.shape)
    carried_spleen = np.zeros(ct.shape, bool)
    carried_spleen[2:18, 10:60, 10:40] = True
    carried_kidney = np.zeros(ct.shape, bool)
    carried_kidney[5:15, 25:45, 38:48] = True  # lies on the spleen's medial part
    priors = {"Spleen": carried_spleen, "Kidney_L": carried_kidney}
    adapted, _, _, weak = adapt_priors(_image(ct, spacing=(2.0, 2.0, 2.0)), priors)
    assert set(weak) == {"Kidney_L"} and "Spleen" in weak["Kidney_L"], weak
    taken = carried_kidney & spleen  # the spleen's tissue under the carried kidney
    assert (adapted["Spleen"] & taken).sum() > 0.9 * taken.sum()
    assert dice(adapted["Spleen"], spleen) > 0.85, dice(adapted["Spleen"], spleen)

    kidney = np.zeros(ct.shape, bool)
    kidney[4:16, 20:50, 56:70] = True  # 6 px of fat between
    ct2 = np.full(ct.shape, -100.0)
    ct2[spleen | kidney] = 50
    ct2 += rng.normal(0, 5, ct.shape)
    priors = {"Spleen": spleen, "Kidney_L": np.roll(kidney, -2, axis=2)}
    _, _, _, weak = adapt_priors(_image(ct2, spacing=(2.0, 2.0, 2.0)), priors)
    assert weak == {}, weak


def test_real_organs_are_not_carved_from_each_other(small_ct):
    """The 3 mm example CT's own liver, spleen, kidneys and stomach touch over a small share of their surface."""
    organs = ("Liver", "Spleen", "Kidney_L", "Kidney_R", "Stomach")
    assert carved_out({name: small_ct.mask(name) for name in organs}) == {}


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
    adapted, inside, methods, weak = adapt_priors(_image(ct, spacing=(2.0, 2.0, 2.0)), priors, inside)
    assert methods == {"Liver": METHOD_ATLAS_HU, "External": METHOD_HU} and weak == {}
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


def _spine(shape=(24, 60, 60)):
    """Soft tissue (40 HU) with two stacked 'vertebrae' touching at z = 12 (a 2-voxel cortex of 500 HU around
    160 HU marrow; behind each body a bony arch around a 0.96 cm² canal of 20 HU) and a 'rib' bar (450 HU)
    beside them: (ct, true masks)."""
    from scipy import ndimage

    ct = np.full(shape, 40.0)
    truth = {}
    for name, zs in (("VB_T12", slice(0, 12)), ("VB_L1", slice(12, 24))):
        bone = np.zeros(shape, bool)
        bone[zs, 14:34, 20:40] = True  # body
        bone[zs, 34:46, 22:38] = True  # arch
        bone[zs, 36:44, 24:36] = False  # canal
        ct[bone] = 160.0
        ct[bone & ~ndimage.binary_erosion(bone, iterations=2)] = 500.0
        ct[zs, 36:44, 24:36] = 20.0
        truth[name] = bone
    rib = np.zeros(shape, bool)
    rib[4:10, 20:24, 46:58] = True
    ct[rib] = 450.0
    truth["Rib12_L"] = rib
    return ct, truth


def test_bones_are_fitted_to_bone_and_touching_levels_split():
    """Carried vertebrae and a rib shifted by 3 mm are fitted back onto the bone; neighbours stay apart; the
    marrow inside the body is kept, the canal is not filled; a label carried onto soft tissue is weak."""
    from oncoseg.contour.bones import BoneSettings, refine_bones

    ct, truth = _spine()
    priors = {name: np.roll(mask, 3, axis=2) for name, mask in truth.items()}
    priors["Rib11_L"] = np.zeros(ct.shape, bool)
    priors["Rib11_L"][14:20, 2:6, 2:14] = True  # soft tissue, far from any bone
    fitted, weak = refine_bones(ct, priors, (1.0, 1.0, 1.0), BoneSettings())
    for name, mask in truth.items():
        assert dice(fitted[name], mask) > 0.95 > dice(priors[name], mask), name
    assert not (fitted["VB_T12"] & fitted["VB_L1"]).any()
    assert not fitted["VB_T12"][:, 38:42, 28:32].any()  # the canal stays open
    assert set(weak) == {"Rib11_L"} and "weak evidence" in weak["Rib11_L"]
    assert np.array_equal(fitted["Rib11_L"], priors["Rib11_L"])  # kept as carried, for the record


def test_real_bones_shifted_sideways_come_back(small_ct):
    """On the 3 mm example CT its own vertebrae and ribs, shifted 6 mm sideways, are fitted back onto the bone
    (the rib group too), better than the shifted labels."""
    from oncoseg.contour.bones import refine_bones

    names = ["VB_T12", "VB_L1", "Rib09_L", "Rib10_R", "Rib"]
    truth = {name: small_ct.mask(name) for name in names}
    priors = {name: np.roll(mask, 2, axis=2) for name, mask in truth.items()}
    fitted, weak = refine_bones(small_ct.image.array, priors, small_ct.image.spacing)
    assert weak == {}
    for (
        name
    ) in names:  # measured: vertebrae 0.71 -> 0.84 / 0.77, ribs 0.12 / 0.00 / 0.15 -> 0.80 / 0.84 / 0.81
        assert dice(fitted[name], truth[name]) > max(0.75, dice(priors[name], truth[name]) + 0.05), name


def test_numbered_bones_are_flagged_for_review_and_weak_ones_not_drawn():
    from oncoseg.contour.bones import LEVEL_CAUTION, is_numbered
    from oncoseg.contour.evidence import weigh

    mask = np.zeros((4, 30, 30), bool)
    mask[:, 5:25, 5:25] = True
    assert is_numbered("VB_T12") and is_numbered("Rib07_L") and not is_numbered("Rib")
    drawn = weigh("VB_T12", mask, mask, 1.0, 1.0, method="atlas + bone CT numbers", caution=LEVEL_CAUTION)
    assert drawn.omitted is None and drawn.confidence.review and LEVEL_CAUTION in drawn.confidence.reasons
    weak = weigh("Rib07_L", mask, mask, 1.0, 1.0, weak="weak evidence: no bone")
    assert weak.omitted == "weak evidence: no bone" and weak.confidence is None
    # outside the scan is said first
    assert "outside the scan" in weigh("Rib07_L", mask, mask, 1.0, 0.0, weak="weak evidence: x").omitted

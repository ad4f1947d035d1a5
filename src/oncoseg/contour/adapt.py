"""Fit the carried atlas organs to this patient's CT, and add the organs that CT numbers alone give.

Run between registration and model refinement (`oncoseg.contour.pipeline.contour`):

- organs in `INTENSITY_REFINED` (large organs of even density) are refined with the patient's own HU
  (`oncoseg.contour.intensity`): measured between the two TotalSegmentator example patients, this raised Dice
  for liver, spleen and stomach both ways (docs/contour.md, "More and better organs");
- organs in `HU_ORGANS` (body outline, lungs, spinal canal) come from `oncoseg.contour.anatomy`, not from the
  atlas; they need no atlas label, and lungs found in the scan replace nothing the atlas carries (the atlas'
  lung *lobes* stay atlas-only);
- ``A_Aorta`` is found as a contrast-filled lumen near its carried label and ``SpinalCord`` inside the bony
  spinal canal (`oncoseg.contour.tubes`); without contrast, or where the canal is not found near the carried
  cord, the carried label stays. The model does not refine these (`NO_MODEL_METHODS`);
- vertebrae and ribs (`oncoseg.contour.bones.is_bone`) are fitted to the patient's bone
  (`oncoseg.contour.bones.refine_bones`); one whose carried label holds too little bone is weak evidence.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from oncoseg.contour.anatomy import anatomy
from oncoseg.contour.bones import is_bone, refine_bones
from oncoseg.contour.intensity import refine_by_intensity
from oncoseg.contour.tubes import aorta_from_contrast, cord_in_canal
from oncoseg.image import MedicalImage

HU_ORGANS = ("External", "Lung_L", "Lung_R", "Lungs", "SpinalCanal")
INTENSITY_REFINED = frozenset({"Liver", "Spleen", "Stomach", "Kidney_L", "Kidney_R"})
METHOD_HU = "CT numbers"
METHOD_ATLAS_HU = "atlas + CT numbers"
METHOD_BONE = "atlas + bone CT numbers"
METHOD_CONTRAST = "atlas + contrast lumen"
METHOD_CANAL = "atlas + spinal canal"
NO_MODEL_METHODS = frozenset({METHOD_CONTRAST, METHOD_CANAL})  # found from CT numbers: the model is not asked


CARVED_SHARE = 0.25  # a fitted organ with this share of its surface against a larger one was carved from it


def carved_out(fitted: dict[str, np.ndarray]) -> dict[str, str]:
    """Organs fitted by CT numbers that lie against a larger fitted organ over at least `CARVED_SHARE` of their
    surface, with nothing between: name → the weak-evidence reason.

    Organs of these CT numbers (liver, spleen, kidneys, stomach) are parted by fat or an edge that neither takes,
    so real ones touch over a small share of their surface (at most 13 % between the example CT's own kidneys
    and liver, registered to a bent copy of itself, `oncoseg.contour.check.synthetic_patient`, seeds 0 and 1). An
    atlas organ the scan does not hold, carried over another organ, is fitted to that organ's tissue and cut
    from it by the competition: the slab's absent kidneys lay against the spleen and liver over 32 % and 50 %.
    Set on those four cases only: a heuristic."""
    reasons = {}
    for name, mask in fitted.items():
        if not mask.any():
            continue
        surface = mask & ~ndimage.binary_erosion(mask)
        for other, neighbour in fitted.items():
            if other == name or neighbour.sum() <= mask.sum():
                continue
            share = float((surface & ndimage.binary_dilation(neighbour)).sum()) / float(surface.sum())
            if share >= CARVED_SHARE:
                reasons[name] = (
                    f"weak evidence: {share:.0%} of it lies against the {other} with nothing between "
                    f"(the {other}'s tissue, not a {name})"
                )
                break
    return reasons


def supported(atlas_organs: list[str]) -> list[str]:
    """The atlas' organs plus the HU organs (each once)."""
    return list(atlas_organs) + [name for name in HU_ORGANS if name not in atlas_organs]


def adapt_priors(
    image: MedicalImage,
    priors: dict[str, np.ndarray],
    inside: dict[str, float | None] | None = None,
    fit: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, float | None], dict[str, str], dict[str, str]]:
    """(priors, inside, methods, weak) with the fitted and HU organs in place of the carried labels.

    ``priors``: name → carried atlas mask for every organ asked for (an HU organ's entry may be empty);
    ``inside``: the share of each carried organ inside the scan (an HU organ's becomes None: it is found in
    the scan itself); ``methods``: name → how the returned mask was made, for the organs this changed;
    ``weak``: name → why the CT contradicts a carried organ (not to be drawn). ``fit=False``
    (``contour(refine=False)``: the registered atlas labels as they are) only adds the HU organs."""
    priors, inside = dict(priors), dict(inside or {})
    methods: dict[str, str] = {}
    weak: dict[str, str] = {}
    bones = {name: mask for name, mask in priors.items() if fit and is_bone(name) and mask.any()}
    if bones:
        fitted, weak = refine_bones(image.array, bones, image.spacing)
        priors.update(fitted)
        methods.update({name: METHOD_BONE for name in bones})
    refine = [name for name in priors if fit and name in INTENSITY_REFINED and priors[name].any()]
    wanted = [name for name in HU_ORGANS if name in priors]
    cord = fit and "SpinalCord" in priors and priors["SpinalCord"].any()
    found = anatomy(image) if wanted or cord or refine else {}
    if refine:
        carried = {name: mask for name, mask in priors.items() if name not in HU_ORGANS}
        refined = refine_by_intensity(
            image.array, carried, image.spacing, organs=refine, not_gas=found["Lungs"]
        )
        carved = carved_out(refined)
        # an organ the scan does not hold, fitted to a neighbour's tissue: the neighbour takes it back
        if carved:
            weak.update(carved)
            kept = [name for name in refine if name not in carved]
            refined.update(
                refine_by_intensity(image.array, carried, image.spacing, organs=kept, not_gas=found["Lungs"])
            )
            refined.update({name: priors[name] for name in carved})
        priors.update(refined)
        methods.update({name: METHOD_ATLAS_HU for name in refine})
    if fit and "A_Aorta" in priors and priors["A_Aorta"].any():
        lumen, _ = aorta_from_contrast(image.array, priors["A_Aorta"], image.spacing)
        if lumen is not None:
            priors["A_Aorta"], methods["A_Aorta"] = lumen, METHOD_CONTRAST
    if cord:
        priors["SpinalCord"], used = cord_in_canal(priors["SpinalCord"], found["SpinalCanal"], image.spacing)
        if used:
            methods["SpinalCord"] = METHOD_CANAL
    if wanted:
        for name in wanted:
            priors[name] = found[name]
            inside[name] = None
            methods[name] = METHOD_HU
    return priors, inside, methods, weak

"""What speaks for each contoured organ: whether it is drawn at all, and how far to trust it.

For every organ asked for, `weigh` reads facts the pipeline already has — the registered atlas prior, how much
of the atlas organ falls inside the scanned volume (`coverage`), and, for organs the model refined, how well the
model's masks agree with the prior, how many slices it accepted and its scores — and returns an `OrganEvidence`:

* ``omitted``: the reason the organ is **not drawn** (None when it is). An organ is left out when its registered
  prior does not reach the scan, when only a sliver of it does (under `MIN_INSIDE_FRACTION` of the atlas organ,
  or under `MIN_PRIOR_ML` inside the scan), or when the model, asked to refine it, disagrees with the atlas
  (agreement under `MIN_AGREEMENT`, or fewer than `MIN_ACCEPTED` of the prior's slices accepted).
* ``confidence``: an `oncoseg.quality.Quality` for drawn organs. The estimate is a product of factors in
  0..1 — model agreement with the atlas (or `ATLAS_ONLY` for organs the model does not check), the model's mean
  score, the share of the atlas organ inside the scan, and the organ's size (small organs suffer most from a
  registration error of a few mm). It is a **heuristic**, not calibrated like `oncoseg.quality.assess`: the
  thresholds were set on the one labelled example series we have (docs/contour.md), so read it as an order of
  review, not as a probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from oncoseg.contour.registration import to_sitk
from oncoseg.image import MedicalImage
from oncoseg.quality import Quality

MIN_INSIDE_FRACTION = 0.1  # share of the registered atlas organ inside the scan below which it is not drawn
MIN_PRIOR_ML = 1.0  # registered prior inside the scan below this: not drawn
MIN_AGREEMENT = 0.8  # Dice(model-refined mask, prior) below this: the model disagrees, not drawn
MIN_ACCEPTED = 0.5  # share of the prior's slices where the model mask was accepted
ATLAS_ONLY = 0.7  # agreement factor of an organ the model does not check
REVIEW_BELOW = 0.5  # confidence estimates below this are flagged for review
SIZE_ML = 50.0  # organs smaller than this get a size factor below 1
COVERAGE_SPACING_MM = 4.0
COVERAGE_MARGIN_MM = 150.0


@dataclass
class OrganEvidence:
    """The facts about one organ, the decision (``omitted`` reason or None) and the ``confidence``."""

    prior_ml: float
    volume_ml: float
    inside_fraction: float | None  # share of the registered atlas organ inside the scan (None: not measured)
    agreement: float | None = None  # Dice(final mask, prior) for model-refined organs
    accepted: float | None = None  # share of the prior's slices where the model mask was accepted
    mean_score: float | None = None
    omitted: str | None = None
    confidence: Quality | None = None
    method: str = "atlas only"  # how the mask was made before any model check (the pipeline's method)

    def to_dict(self) -> dict:
        row = {
            "prior_ml": round(self.prior_ml, 2),
            "volume_ml": round(self.volume_ml, 2),
            "inside_fraction": None if self.inside_fraction is None else round(self.inside_fraction, 3),
            "agreement": None if self.agreement is None else round(self.agreement, 3),
            "accepted_slices": None if self.accepted is None else round(self.accepted, 3),
            "mean_score": None if self.mean_score is None else round(self.mean_score, 3),
        }
        if self.omitted:
            row["omitted"] = self.omitted
        if self.confidence is not None:
            row["confidence"] = self.confidence.to_dict()
        return row


def coverage(
    labels: MedicalImage, values: dict[str, list[int]], transform: sitk.Transform, patient: MedicalImage
) -> dict[str, float]:
    """Share of each registered atlas organ (label ``values`` per name) that lies inside the patient's scan.

    The atlas labels are carried, through ``transform``, onto a coarse grid (`COVERAGE_SPACING_MM`) that is the
    patient's volume grown by `COVERAGE_MARGIN_MM` on every side; the share is the organ's voxels inside the
    scanned volume over all its voxels there (an organ the margin cuts counts as more inside than it is)."""
    reference = to_sitk(patient.with_array(np.zeros(patient.shape, np.uint8)), np.uint8)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    size = np.array(reference.GetSize(), dtype=float)
    spacing = np.array(reference.GetSpacing())
    extent = size * spacing
    origin = np.array(reference.GetOrigin()) - direction @ (spacing / 2 + COVERAGE_MARGIN_MM)
    grid = [int(np.ceil((e + 2 * COVERAGE_MARGIN_MM) / COVERAGE_SPACING_MM)) for e in extent]
    warped = sitk.Resample(
        to_sitk(labels, np.uint16),
        grid,
        transform,
        sitk.sitkNearestNeighbor,
        origin.tolist(),
        (COVERAGE_SPACING_MM,) * 3,
        reference.GetDirection(),
        0,
        sitk.sitkUInt16,
    )
    array = sitk.GetArrayFromImage(warped)  # [z, y, x] of the grown grid
    # the scanned volume inside the grown grid: the margin in voxels of the coarse grid, per axis (x, y, z)
    low = np.floor(COVERAGE_MARGIN_MM / COVERAGE_SPACING_MM).astype(int)
    high = [low + int(np.ceil(e / COVERAGE_SPACING_MM)) for e in extent]
    inside = np.zeros(array.shape, dtype=bool)
    inside[low : high[2], low : high[1], low : high[0]] = True
    shares = {}
    for name, vals in values.items():
        organ = np.isin(array, vals)
        total = int(organ.sum())
        shares[name] = float((organ & inside).sum()) / total if total else 0.0
    return shares


def weigh(
    name: str,
    prior: np.ndarray,
    mask: np.ndarray,
    voxel_ml: float,
    inside_fraction: float | None,
    refinement=None,
    method: str = "atlas only",
    weak: str | None = None,
    caution: str | None = None,
) -> OrganEvidence:
    """The decision and confidence for one organ (``refinement``: its `OrganRefinement` if the model ran;
    ``method``: how the mask was made otherwise, named in the reasons; ``weak``: a reason, found earlier, not to
    draw it; ``caution``: a reason to flag it for review whatever its estimate)."""
    evidence = OrganEvidence(float(prior.sum()) * voxel_ml, float(mask.sum()) * voxel_ml, inside_fraction)
    evidence.method = method
    if refinement is not None and refinement.slices:
        total = int(prior.sum()) + int(mask.sum())
        evidence.agreement = 2.0 * int((prior & mask).sum()) / total if total else 1.0
        evidence.accepted = refinement.refined / refinement.slices
        evidence.mean_score = refinement.mean_score
    evidence.omitted = _omission(evidence) if weak is None or _outside(evidence) else weak
    if evidence.omitted is None:
        evidence.confidence = _confidence(evidence)
        if caution:
            c = evidence.confidence
            evidence.confidence = Quality(c.estimate, True, (caution, *c.reasons)[:3])
    return evidence


def _outside(e: OrganEvidence) -> bool:
    """Whether the organ is decided as outside the scan (that reason comes before any other)."""
    reason = _omission(e)
    return reason is not None and "outside the scan" in reason


def _omission(e: OrganEvidence) -> str | None:
    if e.prior_ml == 0:
        return "outside the scan: the registered atlas organ does not reach the scanned volume"
    if e.inside_fraction is not None and e.inside_fraction < MIN_INSIDE_FRACTION:
        return f"mostly outside the scan: {e.inside_fraction:.0%} of the registered atlas organ lies inside"
    if e.prior_ml < MIN_PRIOR_ML:
        return f"mostly outside the scan: only {e.prior_ml:.1f} mL of the registered atlas organ lies inside"
    if e.agreement is not None and e.agreement < MIN_AGREEMENT:
        return f"weak evidence: the model disagrees with the atlas (agreement {e.agreement:.2f})"
    if e.accepted is not None and e.accepted < MIN_ACCEPTED:
        return f"weak evidence: the model confirmed the atlas on only {e.accepted:.0%} of its slices"
    return None


def _confidence(e: OrganEvidence) -> Quality:
    factors: list[tuple[float, str]] = []
    if e.agreement is None:
        factors.append((ATLAS_ONLY, f"{e.method}, not checked by the model"))
    else:
        factors.append((e.agreement, f"model and atlas agree {e.agreement:.2f}"))
        if e.mean_score is not None:
            factors.append((0.5 + 0.5 * e.mean_score, f"model score {e.mean_score:.2f}"))
    if e.inside_fraction is not None:
        factors.append(
            (
                0.5 + 0.5 * min(1.0, e.inside_fraction / 0.5),
                f"{e.inside_fraction:.0%} of the atlas organ in the scan",
            )
        )
    factors.append((min(1.0, e.volume_ml / SIZE_ML) ** 0.25, f"small ({e.volume_ml:.1f} mL)"))
    estimate = float(np.prod([f for f, _ in factors]))
    reasons = tuple(text for value, text in sorted(factors) if value < 0.9)[:3]
    return Quality(estimate, estimate < REVIEW_BELOW, reasons)

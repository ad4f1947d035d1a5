"""How far to trust a result: a quality estimate for every segmented object, and a "review" flag when it is
likely wrong (Dice below 0.7 against what an expert would draw).

The estimate is a logistic model over a few facts every result has, whatever the prompt or model: the model's
own score (SAM's predicted IoU; the mean and the lowest over the slices of a volume), how much of the mask lies in
its largest connected piece, how much of it touches the image border, and for a volume how open its ends are (a
walk that stopped while the object was still large on its last slice) and how abruptly it changes between
neighbouring slices. The weights and the review threshold come from `benchmarks/confidence.py`, fitted on train
splits only (the review threshold flags 10 % of the good train results) and measured on test splits: see
docs/results.md, "Confidence". A number is shown with its flag; a flagged result is not hidden.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FEATURES = ("score_mean", "score_min", "largest_piece", "border", "open_end", "slice_jump", "is_volume")

# fitted by `python benchmarks/confidence.py --limit 45` (refit: `--rows`) on train splits (189 results, 39 with Dice < 0.7;
# benchmarks/results/confidence.json): logistic regression on standardised features
MEAN = np.array([0.90108, 0.89257, 0.99972, 0.00011, 0.05088, 0.03364, 0.07937])
SCALE = np.array([0.05049, 0.07531, 0.00195, 0.00049, 0.1921, 0.11503, 0.27031])
WEIGHTS = np.array([-1.013, -0.7924, -0.0851, 0.4066, 0.2801, 0.3296, 0.3351])
BIAS = -1.5754
REVIEW_AT = 0.2253  # estimated probability of a bad result from which a result is flagged (10 % of good train results)


@dataclass(frozen=True)
class Quality:
    """``estimate``: the probability that the result is good (Dice >= 0.7), 0-1. ``review``: likely wrong, look
    before using its numbers. ``reasons``: what lowered the estimate, in words."""

    estimate: float
    review: bool
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"estimate": round(self.estimate, 3), "review": self.review, "reasons": list(self.reasons)}

    def describe(self) -> str:
        """One line for people: "quality 0.91" or "REVIEW (quality 0.42: walk stopped while large)"."""
        text = f"quality {self.estimate:.2f}"
        if not self.review:
            return text
        return f"REVIEW ({text}{': ' + ', '.join(self.reasons) if self.reasons else ''})"


def features(mask: np.ndarray, slice_scores: dict, volume: bool) -> np.ndarray:
    """The facts the estimate reads (in the order of `FEATURES`) from a boolean mask (``[z, y, x]`` or
    ``[y, x]``) and the model's score per slice."""
    scores = np.array([float(s) for s in slice_scores.values()] or [0.0])
    mask = np.asarray(mask, dtype=bool)
    total = max(int(mask.sum()), 1)
    labels, count = ndimage.label(mask)
    largest = np.bincount(labels.ravel())[1:].max() / total if count else 0.0
    edges = np.zeros_like(mask)
    edges[..., 0, :] = edges[..., -1, :] = edges[..., :, 0] = edges[..., :, -1] = True
    border = np.count_nonzero(mask & edges) / total
    open_end, slice_jump = 0.0, 0.0
    if mask.ndim == 3 and volume:
        areas = mask.sum(axis=(1, 2)).astype(float)
        zs = np.flatnonzero(areas)
        if len(zs):
            peak = areas.max()
            ends = [
                z for z in (zs[0], zs[-1]) if 0 < z < mask.shape[0] - 1
            ]  # an end at the scan's edge is closed
            open_end = max((areas[z] / peak for z in ends), default=0.0)
            jumps = [
                1.0 - np.count_nonzero(mask[a] & mask[b]) / max(np.count_nonzero(mask[a] | mask[b]), 1)
                for a, b in itertools.pairwise(zs)
                if b == a + 1
            ]
            slice_jump = float(np.percentile(jumps, 90)) if jumps else 0.0
    return np.array(
        [scores.mean(), scores.min(), largest, border, open_end, slice_jump, float(mask.ndim == 3 and volume)]
    )


def standardised(values: np.ndarray, mean=None, scale=None) -> np.ndarray:
    """Features in units of their train spread, clipped to ±3: a fact rare in training (a mask on the image
    border, in two pieces) counts as unusual, not as a hundred times so."""
    mean = MEAN if mean is None else mean
    scale = SCALE if scale is None else scale
    return np.clip((np.asarray(values) - mean) / scale, -3.0, 3.0)


def assess(mask: np.ndarray, slice_scores: dict, volume: bool) -> Quality:
    """The quality of one result (see the module docstring)."""
    z = standardised(features(mask, slice_scores, volume))
    p_bad = float(1.0 / (1.0 + np.exp(-(BIAS + WEIGHTS @ z))))
    review = p_bad >= REVIEW_AT
    reasons = []
    if review:
        pushes = WEIGHTS * z  # what pushed towards "bad", largest first
        words = {
            "score_mean": "low model score",
            "score_min": "a slice with a low model score",
            "largest_piece": "in several pieces",
            "border": "runs into the image border",
            "open_end": "walk stopped while the object was still large",
            "slice_jump": "changes abruptly between slices",
            "is_volume": "3D propagation",
        }
        reasons = [words[FEATURES[i]] for i in np.argsort(-pushes) if pushes[i] > 0.5][:3]
    return Quality(1.0 - p_bad, review, tuple(reasons))


def with_doubts(quality: Quality, doubts) -> Quality:
    """``quality`` flagged for review, ``doubts`` (reasons known apart from the mask, e.g. a concept whose
    modality was only guessed) first among its reasons; unchanged without doubts."""
    doubts = tuple(d for d in doubts if d)
    if not doubts:
        return quality
    return Quality(quality.estimate, True, (*doubts, *quality.reasons))


def text_quality(mask: np.ndarray, score: float, volume: bool, doubt: str | None = None) -> Quality:
    """The quality of one instance a text prompt found: `assess` with the instance's detection score as the
    model's score, and ``doubt`` (see `with_doubts`)."""
    mask = np.asarray(mask, dtype=bool)
    if volume and mask.ndim == 3:
        slice_scores = {int(z): float(score) for z in np.flatnonzero(mask.any(axis=(1, 2)))}
    else:
        slice_scores = {0: float(score)}
    return with_doubts(assess(mask, slice_scores, volume), [doubt])

"""How far to trust a result: a quality estimate for every segmented object, and a "review" flag when it is
likely wrong (Dice below 0.7 against what an expert would draw).

The estimate is a logistic model over a few facts every result has, whatever the prompt or model: the model's
own score (SAM's predicted IoU; the mean and the lowest over the slices of a volume), how much of the mask lies in
its largest connected piece, how much of it touches the image border, and for a volume how open its ends are (a
walk that stopped while the object was still large on its last slice) and how abruptly it changes between
neighbouring slices; and whether it was asked for with clicks alone (no box: the model guessed the size). The
weights and the review threshold come from `benchmarks/confidence.py`, fitted on train splits only (the review
threshold flags 10 % of the good train results it decides) and measured on test splits: see docs/results.md,
"Confidence". A number is shown with its flag; a flagged result is not hidden.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FEATURES = ("score_mean", "score_min", "largest_piece", "border", "open_end", "slice_jump", "clicks_only")


@dataclass(frozen=True)
class Fit:
    """A logistic model of "bad" (Dice < 0.7) over standardised `FEATURES`, and the estimated probability of a
    bad result from which a result is flagged for review (10 % of the good train results)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    review_at: float

    def bad_probability(self, values) -> float:
        """The estimated probability that a result with these feature ``values`` is bad."""
        z = standardised(values, self.mean, self.scale)
        return float(1.0 / (1.0 + np.exp(-(self.bias + self.weights @ z))))


# Fitted by `python benchmarks/confidence.py --limit 45 --volumes 45 --threads 1` with the default model on train
# splits (174 pictures, 27 with Dice < 0.7; 153 propagated volumes, 92 bad; benchmarks/results/confidence.json), one
# model for pictures and one for volumes: a volume's scores come from other decoders (the mask-prompt walk scores
# its slices 0.1-0.2 lower than the box decoder; one model over both flagged every good volume, a liver of Dice
# 0.96 too), its Dice from other errors. Pictures read "clicks_only" (BUSI test: 16 of 42 clicks bad, no box);
# volumes ignore it, since a 3D walk from a click alone is flagged by its doubt (`oncoseg.session.CLICK_ONLY`),
# and the volume threshold flags 10 % of the good train volumes the estimate decides alone (the box-started ones).
# Test AUROC 0.82 (pictures), 0.72 (volumes); docs/results.md.
PICTURE_FIT = Fit(
    mean=np.array([0.91155, 0.91155, 0.99987, 0.00012, 0.0, 0.0, 0.5]),
    scale=np.array([0.03408, 0.03408, 0.00104, 0.00048, 1.0, 1.0, 0.5]),
    weights=np.array([-0.3876, -0.3876, -0.2136, 0.2747, 0.0, 0.0, 0.5617]),
    bias=-1.9913,
    review_at=0.2769,
)
VOLUME_FIT = Fit(
    mean=np.array([0.76029, 0.59258, 0.97934, 0.00044, 0.32911, 0.41069, 0.0]),
    scale=np.array([0.03533, 0.06172, 0.06866, 0.00184, 0.24982, 0.1029, 1.0]),
    weights=np.array([-0.2478, 0.0546, -0.3536, 0.009, 0.2656, 0.0719, 0.0]),
    bias=0.4488,
    review_at=0.6565,
)


@dataclass(frozen=True)
class Quality:
    """``estimate``: the probability that the result is good (Dice >= 0.7), 0-1. ``review``: likely wrong, look
    before using its numbers. ``reasons``: what lowered the estimate, in words."""

    estimate: float
    review: bool
    reasons: tuple[str, ...] = ()
    slices: tuple[int, ...] = ()  # of a 3D result: the slices to look at first (`assess_slices`)

    def to_dict(self) -> dict:
        return {
            "estimate": round(self.estimate, 3),
            "review": self.review,
            "reasons": list(self.reasons),
            "review_slices": list(self.slices),
        }

    def describe(self) -> str:
        """One line for people: "quality 0.91" or "REVIEW (quality 0.42: walk stopped while large)", and the
        slices to look at first ("; check slices 12, 13")."""
        text = f"quality {self.estimate:.2f}"
        if self.review:
            text = f"REVIEW ({text}{': ' + ', '.join(self.reasons) if self.reasons else ''})"
        if self.slices:
            shown = ", ".join(map(str, self.slices[:6])) + (", ..." if len(self.slices) > 6 else "")
            text += f"; check slice{'s' if len(self.slices) > 1 else ''} {shown}"
        return text


def features(mask: np.ndarray, slice_scores: dict, volume: bool, clicks_only: bool = False) -> np.ndarray:
    """The facts the estimate reads (in the order of `FEATURES`) from a boolean mask (``[z, y, x]`` or
    ``[y, x]``), the model's score per slice and whether the result was asked for with clicks alone (no box: the
    model guessed the object's size)."""
    scores = np.array([float(s) for s in slice_scores.values()] or [0.0])
    mask = np.asarray(mask, dtype=bool)
    slices = mask.shape[0] if mask.ndim == 3 else 1
    offset = 0
    if mask.ndim == 3:  # only the slices holding the object (a slice result in a CT: 1 of hundreds)
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        offset = int(zs[0]) if len(zs) else 0
        mask = mask[offset : int(zs[-1]) + 1] if len(zs) else mask[:0]
    total = max(int(mask.sum()), 1)
    edges = np.zeros(mask.shape[-2:], dtype=bool)
    edges[0, :] = edges[-1, :] = edges[:, 0] = edges[:, -1] = True
    border = np.count_nonzero(mask & edges) / total
    # the rest reads only the object's bounding box
    footprint = mask.reshape(-1, *mask.shape[-2:]).any(axis=0)
    if footprint.any():
        rows, cols = np.flatnonzero(footprint.any(axis=1)), np.flatnonzero(footprint.any(axis=0))
        mask = mask[..., rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    labels, count = ndimage.label(mask)
    largest = np.bincount(labels.ravel())[1:].max() / total if count else 0.0
    open_end, slice_jump = 0.0, 0.0
    if mask.ndim == 3 and volume:
        areas = mask.sum(axis=(1, 2)).astype(float)
        zs = np.flatnonzero(areas)
        if len(zs):
            peak = areas.max()
            ends = [
                z for z in (zs[0], zs[-1]) if 0 < z + offset < slices - 1
            ]  # an end at the scan's edge is closed
            open_end = max((areas[z] / peak for z in ends), default=0.0)
            jumps = [
                1.0 - np.count_nonzero(mask[a] & mask[b]) / max(np.count_nonzero(mask[a] | mask[b]), 1)
                for a, b in itertools.pairwise(zs)
                if b == a + 1
            ]
            slice_jump = float(np.percentile(jumps, 90)) if jumps else 0.0
    return np.array([scores.mean(), scores.min(), largest, border, open_end, slice_jump, float(clicks_only)])


def standardised(values: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Features in units of their train spread, clipped to ±3: a fact rare in training (a mask on the image
    border, in two pieces) counts as unusual, not as a hundred times so."""
    return np.clip((np.asarray(values) - mean) / scale, -3.0, 3.0)


def assess(mask: np.ndarray, slice_scores: dict, volume: bool, clicks_only: bool = False) -> Quality:
    """The quality of one result (see the module docstring): a propagated volume is read by `VOLUME_FIT`,
    anything else (a picture, one slice of a volume) by `PICTURE_FIT`; ``clicks_only``: asked for with clicks
    and no box."""
    fit = VOLUME_FIT if volume and np.ndim(mask) == 3 else PICTURE_FIT
    values = features(mask, slice_scores, volume, clicks_only)
    p_bad = fit.bad_probability(values)
    review = p_bad >= fit.review_at
    reasons = []
    if review:
        pushes = fit.weights * standardised(
            values, fit.mean, fit.scale
        )  # what pushed towards "bad", largest first
        words = {
            "score_mean": "low model score",
            "score_min": "a slice with a low model score",
            "largest_piece": "in several pieces",
            "border": "runs into the image border",
            "open_end": "walk stopped while the object was still large",
            "slice_jump": "changes abruptly between slices",
            "clicks_only": "clicks alone, no box",
        }
        order = np.argsort(-pushes)
        reasons = [words[FEATURES[i]] for i in order if pushes[i] > 0.5][:3]
        if not reasons and pushes[order[0]] > 0:  # no one fact stands out: the one that pushed most
            reasons = [words[FEATURES[order[0]]]]
    slices = ()
    if volume and np.ndim(mask) == 3:
        slices = tuple(z for z, (_, flagged) in sorted(assess_slices(mask, slice_scores).items()) if flagged)
    return Quality(1.0 - p_bad, review, tuple(reasons), slices)


def with_doubts(quality: Quality, doubts) -> Quality:
    """``quality`` flagged for review, ``doubts`` (reasons known apart from the mask, e.g. a concept whose
    modality was only guessed) first among its reasons; unchanged without doubts."""
    doubts = tuple(d for d in doubts if d)
    if not doubts:
        return quality
    return Quality(quality.estimate, True, (*doubts, *quality.reasons), quality.slices)


def text_quality(mask: np.ndarray, score: float, volume: bool, doubt: str | None = None) -> Quality:
    """The quality of one instance a text prompt found: `assess` with the instance's detection score as the
    model's score, and ``doubt`` (see `with_doubts`)."""
    mask = np.asarray(mask, dtype=bool)
    if volume and mask.ndim == 3:
        slice_scores = {int(z): float(score) for z in np.flatnonzero(mask.any(axis=(1, 2)))}
    else:
        slice_scores = {0: float(score)}
    return with_doubts(assess(mask, slice_scores, volume), [doubt])


# Per slice of a 3D result: which slices to look at first. Fitted by `python benchmarks/slice_quality.py --limit 24
# --threads 1` on 24 MSD Hippocampus train volumes (490 slices, 144 with Dice < 0.7; box on the largest slice, walked
# with the default model): logistic regression on standardised slice features, review threshold flagging 10 % of the
# good train slices (benchmarks/results/slice_quality.json). On 24 test volumes (484 slices): AUROC 0.89, 71 % of
# the slices with Dice < 0.7 flagged, 9 % of the others.
SLICE_FEATURES = ("score", "neighbour_iou", "area_ratio")
SLICE_MEAN = np.array([0.748, 0.7861, 0.8948])
SLICE_SCALE = np.array([0.0631, 0.092, 0.1106])
SLICE_WEIGHTS = np.array([-2.435, 0.5399, 0.0386])
SLICE_BIAS = -1.249
SLICE_REVIEW_AT = 0.3566


def slice_features(mask: np.ndarray, slice_scores: dict) -> dict[int, np.ndarray]:
    """Per slice holding the object: the model's score there, its best IoU with a neighbouring slice's mask and
    its area over the larger neighbour's (in the order of `SLICE_FEATURES`)."""
    mask = np.asarray(mask, dtype=bool)
    out: dict[int, np.ndarray] = {}
    if mask.ndim != 3:
        return out
    areas = mask.sum(axis=(1, 2))
    for z in np.flatnonzero(areas):
        z = int(z)
        neighbours = [n for n in (z - 1, z + 1) if 0 <= n < mask.shape[0] and areas[n]]
        ious = [np.count_nonzero(mask[z] & mask[n]) / np.count_nonzero(mask[z] | mask[n]) for n in neighbours]
        ratio = areas[z] / max((areas[n] for n in neighbours), default=areas[z])
        score = float(slice_scores.get(z, np.mean(list(slice_scores.values()) or [0.0])))
        out[z] = np.array([score, max(ious, default=0.0), min(float(ratio), 2.0)])
    return out


def assess_slices(mask: np.ndarray, slice_scores: dict) -> dict[int, tuple[float, bool]]:
    """Per slice of a 3D result: (estimated probability that the slice is good, review flag)."""
    result = {}
    for z, values in slice_features(mask, slice_scores).items():
        x = np.clip((values - SLICE_MEAN) / SLICE_SCALE, -3.0, 3.0)
        p_bad = float(1.0 / (1.0 + np.exp(-(SLICE_BIAS + SLICE_WEIGHTS @ x))))
        result[z] = (1.0 - p_bad, p_bad >= SLICE_REVIEW_AT)
    return result

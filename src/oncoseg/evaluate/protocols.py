"""Prompt protocols: how an evaluation prompts the model from a ground-truth mask.

``box``            tight bounding box of the mask (all its pieces), optionally with each side moved at random by
                   up to ``jitter`` × the box size (``box:jitter=0.1``)
``points``         ``n`` positive clicks inside the mask, the first at its most interior pixel (``points:3``)
``text``           the target's concept name as a text prompt, nothing else (no box, no click): every instance
                   the backend finds is united into the prediction (LiteMedSAM: its concept head; SAM3: its own
                   text path). Images whose target is absent are still run, and their row records
                   ``pred_voxels`` (0 = correctly empty); they stay out of the Dice means, as for every protocol. Targets without a concept
                   (e.g. the hippocampus's Anterior/Posterior parts) are not scored

Random choices are seeded per case and target (not per run order), so results do not depend on how the cases
are split between processes or on resuming.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from oncoseg.errors import OncoSegError
from oncoseg.prompts import Prompt, box_from_mask, points_from_mask

KINDS = ("box", "points", "text")


@dataclass(frozen=True)
class Protocol:
    kind: str = "box"
    jitter: float = 0.0  # box: fraction of the box size each side may move
    points: int = 1  # points: how many clicks
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise OncoSegError(f"unknown prompt protocol {self.kind!r}: choose one of {', '.join(KINDS)}")
        if not 0 <= self.jitter < 1:
            raise OncoSegError(f"box jitter must be in [0, 1), got {self.jitter}")
        if self.points < 1:
            raise OncoSegError(f"points protocol needs at least 1 point, got {self.points}")

    def describe(self) -> str:
        if self.kind == "box":
            return "GT box" + (
                f", jitter ±{self.jitter:g} of its size (seed {self.seed})" if self.jitter else ""
            )
        if self.kind == "points":
            return f"{self.points} positive GT point{'s' if self.points > 1 else ''} (seed {self.seed})"
        return "target name as text"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "jitter": self.jitter, "points": self.points, "seed": self.seed}

    def rng(self, *keys: object) -> np.random.Generator:
        """A generator seeded by the protocol's seed and ``keys`` (case, target, slice)."""
        digest = hashlib.sha256("\0".join(map(str, (self.seed, *keys))).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def prompt(self, mask: np.ndarray, *keys: object, z: int | None = None) -> Prompt:
        """The prompt for one 2D ``mask`` (a slice ``z`` of a volume, or a picture)."""
        if self.kind == "box":
            rng = self.rng(*keys, z) if self.jitter else None
            return Prompt(box=box_from_mask(mask, jitter=self.jitter, rng=rng, z=z))
        if self.kind == "points":
            return Prompt(points=points_from_mask(mask, self.points, rng=self.rng(*keys, z), z=z))
        raise OncoSegError("a text protocol has no prompt from a mask: use text_for(dataset, target)")

    @staticmethod
    def text_for(dataset: str, target: str) -> str | None:
        """The text prompt for ``target`` of ``dataset``: the name of the concept of that target (busi/lesion →
        "breast lesion", msd-hippocampus/whole → "hippocampus"), else None (the target is not scored)."""
        from oncoseg.concepts.vocabulary import CONCEPTS

        for concept in CONCEPTS:
            if (dataset, target) in concept.sources:
                return concept.name
        return None


def parse_protocol(text: str, seed: int = 0) -> Protocol:
    """``box``, ``box:jitter=0.1``, ``points``, ``points:3`` or ``text``."""
    kind, _, option = text.strip().partition(":")
    kind = kind.strip().lower()
    try:
        if kind == "box" and option:
            name, _, value = option.partition("=")
            if name.strip() != "jitter":
                raise ValueError
            return Protocol("box", jitter=float(value), seed=seed)
        if kind == "points" and option:
            return Protocol("points", points=int(option), seed=seed)
        if option:
            raise ValueError
    except ValueError:
        raise OncoSegError(
            f"cannot read prompt protocol {text!r}: use box, box:jitter=0.1, points, points:3 or text"
        ) from None
    return Protocol(kind, seed=seed)

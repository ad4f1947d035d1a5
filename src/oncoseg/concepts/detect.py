"""Concept head outputs → instance boxes → LiteMedSAM mask decoder → one mask per instance.

`find_instances` reads the head's coarse 64×64 mask of one concept: its connected components (above 0.5) are
the instances, each scored presence probability × the component's mean probability; small components and
those far weaker than the best are dropped. If the concept is surely present (presence ≥ 0.9) but no cell
reaches 0.5, the region around the coarse map's peak is the one instance (``fallback``). Each instance's box (in image pixels, slightly enlarged) is given
to the mask decoder, and overlapping masks are suppressed (mask NMS, best score first).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from oncoseg.concepts.head import ConceptHead
from oncoseg.concepts.vocabulary import Concept, concept_names, match
from oncoseg.errors import ModelError, OncoSegError
from oncoseg.models.base import ImageEmbedding, MaskPrediction
from oncoseg.prompts import Box, Prompt

WEIGHTS_NAME = "concept_head.pt"
WEIGHTS_ENV = "ONCOSEG_CONCEPT_HEAD"
GRID = 64
FRAME = 256


@dataclass
class DetectSettings:
    threshold: float = 0.5  # minimum instance score (presence × mean coarse probability)
    mask_threshold: float = 0.5  # coarse probability that counts as inside
    min_cells: int = 3  # smallest component kept, in 64×64 cells (one cell = 4×4 pixels of the 256 frame)
    relative: float = 0.3  # drop instances scoring below this share of the best one
    pad_cells: float = 0.5  # box enlargement on each side, in cells
    nms_iou: float = 0.5  # masks overlapping a better one by more than this are dropped
    # when the concept is present (presence ≥ threshold) but no cell passes mask_threshold: take the region
    # around the coarse map's peak (cells ≥ this share of the peak) as the one instance
    fallback: float = 0.3
    fallback_presence: float = 0.9  # ... only when the presence probability is at least this


@dataclass
class LoadedHead:
    head: ConceptHead
    concepts: list[str]
    settings: DetectSettings
    info: dict


def shipped_weights() -> Path:
    """The concept head weights: ``$ONCOSEG_CONCEPT_HEAD`` if set, else the file inside this package."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    return Path(str(resources.files("oncoseg.concepts").joinpath(WEIGHTS_NAME)))


def save_head(path: str | Path, head: ConceptHead, concepts: list[str], settings: DetectSettings, info: dict):
    """Write the head (float16 weights, its config, concepts, detection settings and training record)."""
    state = {k: v.detach().to(torch.float16) for k, v in head.state_dict().items()}
    document = {
        "format": "oncoseg-concept-head/1",
        "config": head.config(),
        "concepts": list(concepts),
        "settings": settings.__dict__,
        "info": info,
        "state_dict": state,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(document, temporary)
    temporary.replace(path)


def read_head(path: str | Path) -> LoadedHead:
    """Load a concept head file; `ModelError` with one line if it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"concept head weights not found: {path} (reinstall oncoseg, or train them: "
            "oncoseg train configs/concepts.yaml)"
        )
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
        if document.get("format") != "oncoseg-concept-head/1":
            raise ValueError("not a concept head file")
        head = ConceptHead(**document["config"])
        head.load_state_dict({k: v.float() for k, v in document["state_dict"].items()})
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise ModelError(
            f"cannot read the concept head weights {path.name}: file is damaged ({type(error).__name__})"
        ) from None
    settings = DetectSettings(**document.get("settings", {}))
    return LoadedHead(head.eval(), list(document["concepts"]), settings, dict(document.get("info", {})))


@lru_cache(maxsize=4)
def _cached(path: str, mtime: float) -> LoadedHead:
    return read_head(path)


def load_head(path: str | Path | None = None) -> LoadedHead:
    """The concept head at ``path`` (default: `shipped_weights`), loaded once per process."""
    path = Path(path) if path is not None else shipped_weights()
    mtime = path.stat().st_mtime if path.is_file() else 0.0
    return _cached(str(path), mtime)


def resolve(text: str, loaded: LoadedHead) -> tuple[Concept, float, int]:
    """The concept ``text`` names, its match score and its channel in the head."""
    concept, score = match(text)
    if concept.name not in loaded.concepts:
        raise OncoSegError(
            f"{concept.name!r} is not in this model's vocabulary; known: {', '.join(loaded.concepts)}"
        )
    return concept, score, loaded.concepts.index(concept.name)


@torch.inference_mode()
def head_outputs(loaded: LoadedHead, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Presence probabilities ``(K,)`` and coarse mask probabilities ``(K, 64, 64)`` of one embedding."""
    presence, masks = loaded.head(features.float().reshape(1, *features.shape[-3:]))
    return presence[0].sigmoid().numpy(), masks[0].sigmoid().numpy()


def find_instances(
    presence: float, coarse: np.ndarray, input_size: tuple[int, int], settings: DetectSettings
) -> list[tuple[np.ndarray, float]]:
    """Instances of one concept as (box ``[x0, y0, x1, y1]`` in the 256 frame, score), best first."""
    h_cells, w_cells = (int(np.ceil(s / (FRAME / GRID))) for s in input_size)
    valid = np.zeros_like(coarse, dtype=bool)
    valid[:h_cells, :w_cells] = True
    inside = valid & (coarse > settings.mask_threshold)
    if (
        not inside.any()
        and settings.fallback
        and presence >= max(settings.fallback_presence, settings.threshold)
    ):
        peak = float(coarse[valid].max())
        region, _ = ndimage.label(valid & (coarse >= settings.fallback * peak))
        inside = region == region[np.unravel_index(np.argmax(np.where(valid, coarse, -1)), coarse.shape)]
        found = _boxes(inside, coarse, presence, input_size, settings, min_cells=1)
        return found[:1]  # kept because the presence is high; the score is its own
    found = _boxes(inside, coarse, presence, input_size, settings, settings.min_cells)
    found.sort(key=lambda item: -item[1])
    if found:
        best = found[0][1]
        found = [(b, s) for b, s in found if s >= settings.threshold and s >= settings.relative * best]
    return found


def _boxes(inside, coarse, presence, input_size, settings, min_cells):
    """(box in the 256 frame, score) of each connected component of ``inside``."""
    labels, _count = ndimage.label(inside)
    found = []
    cell = FRAME / GRID
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[region] == index
        if component.sum() < min_cells:
            continue
        score = presence * float(coarse[region][component].mean())
        ys, xs = region
        pad = settings.pad_cells
        box = np.array(
            [(xs.start - pad) * cell, (ys.start - pad) * cell, (xs.stop + pad) * cell, (ys.stop + pad) * cell]
        )
        box = np.clip(box, 0, [input_size[1], input_size[0], input_size[1], input_size[0]])
        found.append((box, score))
    return found


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept (masks sorted best first already): each overlaps no better kept mask by more than ``iou``."""
    kept: list[int] = []
    for i in np.argsort(-scores):
        if not masks[i].any():
            continue
        ok = True
        for j in kept:
            union = np.logical_or(masks[i], masks[j]).sum()
            if union and np.logical_and(masks[i], masks[j]).sum() / union > iou:
                ok = False
                break
        if ok:
            kept.append(int(i))
    return kept


def detect(
    backend,
    embedding: ImageEmbedding,
    text: str,
    threshold: float | None = None,
    loaded: LoadedHead | None = None,
) -> MaskPrediction:
    """Every instance of the concept named by ``text`` on this embedding, best first (LiteMedSAM backends)."""
    loaded = loaded or load_head()
    _, _, channel = resolve(text, loaded)
    settings = loaded.settings
    if threshold is not None:
        settings = DetectSettings(**{**settings.__dict__, "threshold": float(threshold)})
    presence, coarse = head_outputs(loaded, embedding.features)
    found = find_instances(float(presence[channel]), coarse[channel], embedding.input_size, settings)
    h, w = embedding.original_size
    if not found:
        return MaskPrediction(np.zeros((0, h, w), bool), np.zeros(0, np.float32), np.zeros((0, 256, 256)))
    scale = FRAME / max(h, w)
    prompts = []
    for box, _ in found:
        x0, y0, x1, y1 = (box / scale).tolist()
        prompts.append(Prompt(box=Box(x0, y0, min(x1, w - 1.0), min(y1, h - 1.0))))
    prediction = backend.decode(embedding, prompts)
    scores = np.array([s for _, s in found], np.float32)
    keep = mask_nms(prediction.masks, scores, settings.nms_iou)
    logits = prediction.logits[keep] if prediction.logits is not None else None
    return MaskPrediction(prediction.masks[keep], scores[keep], logits)


def known_concepts(path: str | Path | None = None) -> list[str]:
    """The concepts the shipped head was trained on (the vocabulary's names if the weights are missing)."""
    try:
        return load_head(path).concepts
    except ModelError:
        return concept_names()

"""The backend interface every model implements, and the registry that names them.

A backend turns a normalised image (``[H, W, 3]`` float32 in [0, 1]) into an embedding once, then turns
prompts into masks many times from that embedding (the segment-anything ``SamPredictor`` pattern).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oncoseg.errors import OncoSegError
from oncoseg.models.transform import FrameTransform
from oncoseg.prompts import Prompt


@dataclass
class ImageEmbedding:
    """A backend's encoding of one 2D image, plus what is needed to map masks back to it."""

    features: Any
    original_size: tuple[int, int]  # (H, W) of the image that was encoded
    input_size: tuple[int, int]  # (h, w) after resizing, before padding
    backend: str
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # backend's per-image decoder state


@dataclass
class MaskPrediction:
    """One mask per prompt: ``masks`` is ``(N, H, W)`` bool, ``scores`` the model's quality estimate per mask,
    ``logits`` the low-resolution logits (usable as a mask prompt on a neighbouring slice)."""

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray | None = None
    # for one click-only prompt: the other masks of a different size that also answer the clicks, as
    # ``(mask [H, W], score)`` smallest first (the user may want the smaller lesion or the larger organ)
    alternatives: tuple[tuple[np.ndarray, float], ...] = ()


class SliceTracker(ABC):
    """A backend's own way of following one object through the slices of a volume (SAM3's video tracker, which
    remembers the slices it has seen). `oncoseg.volume.propagate` asks it for each next slice's mask instead of
    prompting that slice with the enlarged box of its neighbour's mask; the walk's stop rules judge its answers
    the same way. One tracker follows one object, from one prompt, in both directions."""

    @abstractmethod
    def first(self) -> tuple[np.ndarray, float]:
        """The prompted slice's ``[H, W]`` bool mask and score (the slice the tracker is conditioned on)."""

    @abstractmethod
    def next(self, z: int, step: int) -> tuple[np.ndarray, float]:
        """The mask and score on slice ``z``, reached by walking in direction ``step`` (+1 or -1) from the
        prompted slice through the slices already answered."""


class Backend(ABC):
    """A promptable segmentation model: `encode` once per image, then `decode` (box and click prompts) and
    `detect` (concept prompts) from the embedding; optionally `tracker` for volumes."""

    name: str = ""
    supports_text: bool = False
    # Modalities whose pixels this model was trained on as they come (only scaled by their min and max):
    # for these the predictor skips the modality normaliser, which would otherwise shift the model's input.
    native_intensity_modalities: frozenset[str] = frozenset()
    # image pixels <-> the model's input frame: prompts go in and mask logits come back through this one object
    transform: FrameTransform | None = None

    @abstractmethod
    def encode(self, image: np.ndarray) -> ImageEmbedding:
        """Encode a ``[H, W, 3]`` float32 image with values in [0, 1]."""

    @abstractmethod
    def decode(
        self, embedding: ImageEmbedding, prompts: Sequence[Prompt], mask_input: np.ndarray | None = None
    ) -> MaskPrediction:
        """One mask per prompt (box and/or points, in pixel coordinates of the encoded image)."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    # bump when this backend computes embeddings from the same pixels differently (its `encode` changed)
    embedding_version: int = 1

    def embedding_identity(self) -> str | None:
        """What, besides the pixels, decides this backend's embeddings: its name, `embedding_version`, a digest
        of the encoder's weights (a checkpoint or merged adapter changes it), precision and input frame. Keys the
        on-disk `oncoseg.embedding_store`; None (the default) keeps this backend's embeddings out of it."""
        return None

    def check_text(
        self, text: str, modality: str | None = None, modality_source: str | None = None
    ) -> str | None:
        """Raise a clear error for a text prompt this backend cannot answer on an image of ``modality`` (before
        any model work); return a reason to flag the answer for review, or None."""
        return None

    def detect(
        self,
        embedding: ImageEmbedding,
        text: str | None,
        exemplars: Sequence = (),
        threshold: float | None = None,
    ) -> MaskPrediction:
        """Every instance of a concept (``text`` and/or exemplar boxes) on one embedding, best first."""
        raise OncoSegError(f"the {self.name} backend has no text or exemplar prompts")

    def tracker(self, predictor, prompt: Prompt) -> SliceTracker | None:
        """This backend's own tracker for the object ``prompt`` names on the volume set on ``predictor``, or None
        (the default): `oncoseg.volume.propagate` then prompts each slice with its neighbour's box."""
        return None

    def segment_text_volume(
        self, predictor, text: str | None, exemplars: Sequence = (), on_slice=None, threshold=None
    ) -> tuple[np.ndarray, list[float]]:
        """A concept over every slice of the volume on ``predictor``: the instances `detect` finds on each slice,
        joined into 3D objects (`join_in_3d`); returns a label map (1..N, largest object first) and each object's
        mean score."""
        image = predictor.image
        found = np.zeros(image.shape, dtype=bool)
        score_map = np.zeros(image.shape, dtype=np.float32)
        for z in range(image.num_slices):
            prediction = self.detect(predictor.embedding(z), text, exemplars, threshold)
            for mask, score in zip(prediction.masks, prediction.scores, strict=True):
                score_map[z][mask] = np.maximum(score_map[z][mask], score)
                found[z] |= mask
            if on_slice:
                on_slice(z)
        labels = join_in_3d(found)
        scores = [float(score_map[labels == i].mean()) for i in range(1, int(labels.max()) + 1)]
        return labels, scores


def weights_digest(module) -> str:
    """SHA-256 over a torch module's parameters and buffers (names, dtypes, shapes and values)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# A structure found on most slices is one object even where a slice in between missed it; fragments much
# smaller than the largest object are a slice's false positives (measured on the MSD Hippocampus val volumes
# with the text path: 3D instance F1 0.38 -> 0.81, Dice 0.717 -> 0.720; see docs/concepts.md)
BRIDGE_SLICES = 1
MIN_OBJECT_SHARE = 0.1


def join_in_3d(
    found: np.ndarray, bridge_slices: int = BRIDGE_SLICES, min_share: float = MIN_OBJECT_SHARE
) -> np.ndarray:
    """Per-slice detections (a boolean volume) as 3D objects: connected in 3D, also across up to
    ``bridge_slices`` slices where the detection is missing; objects smaller than ``min_share`` of the largest
    are dropped. A label map (uint16, 1..N, largest first)."""
    from scipy import ndimage

    if bridge_slices:
        bridged = ndimage.binary_closing(found, structure=np.ones((3, 1, 1)), iterations=bridge_slices)
        labels, count = ndimage.label(bridged | found)
        labels[~found] = 0
    else:
        labels, count = ndimage.label(found)
    if count == 0:
        return np.zeros(found.shape, dtype=np.uint16)
    sizes = ndimage.sum(found, labels, range(1, count + 1))
    order = [
        i + 1
        for i in np.argsort(-sizes, kind="stable")
        if sizes[i] > 0 and sizes[i] >= min_share * sizes.max()
    ]
    relabel = np.zeros(count + 1, dtype=np.uint16)
    relabel[order] = np.arange(1, len(order) + 1)
    return relabel[labels]


# Backends by name: a factory, or "module:attribute" imported on first use, so that importing oncoseg.models
# loads no backend (and no torch/transformers) and nothing registers itself as a side effect of an import.
_REGISTRY: dict[str, Callable[..., Backend] | str] = {
    "litemedsam": "oncoseg.models.litemedsam:LiteMedSAMBackend",
    "sam3": "oncoseg.models.sam3:Sam3Backend",
}


def register_backend(name: str, factory: Callable[..., Backend] | str) -> None:
    """Make a backend available under ``name``: a factory, or ``"module:attribute"`` imported when first used."""
    _REGISTRY[name] = factory


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def load_backend(name: str = "litemedsam", **kwargs: Any) -> Backend:
    """Build the backend called ``name`` (e.g. ``"litemedsam"``); kwargs go to its constructor."""
    if name not in _REGISTRY:
        raise OncoSegError(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        from importlib import import_module

        module, _, attribute = factory.partition(":")
        factory = getattr(import_module(module), attribute)
    return factory(**kwargs)

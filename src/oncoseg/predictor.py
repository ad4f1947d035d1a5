"""`Predictor`: set an image (2D or a volume) once, then ask for masks from prompts many times.

The image is normalised once for its modality (one intensity mapping for a whole volume) and each slice's
embedding is computed on first use and kept in a bounded LRU cache, so repeated clicks on a slice only run the
light mask decoder. With an `EmbeddingStore` (``embedding_store=``, or ``ONCOSEG_EMBEDDING_CACHE``) embeddings are
also kept on disk, keyed by the pixels, so another run, the service or napari finds a slice seen before.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from oncoseg.embedding_store import EmbeddingStore
from oncoseg.embedding_store import resolve as resolve_store
from oncoseg.errors import EmptyResultError, OncoSegError, PromptError
from oncoseg.image import MedicalImage
from oncoseg.models import Backend, ImageEmbedding, MaskPrediction, load_backend
from oncoseg.preprocess import canonical_modality, get_normalizer, normalize_for_sam
from oncoseg.prompts import Box, Prompt, validate_prompt


def normalise_image(image: MedicalImage, modality: str | None) -> np.ndarray:
    """Pixels in [0, 1]: ``[..., 3]`` for multi-channel images, single-channel ``[z, y, x]``/``[y, x]`` otherwise.

    ``modality=None`` scales the whole image by its finite min and max (what LiteMedSAM itself does); NaN and
    -inf become the minimum, +inf the maximum, so they neither crash nor stretch the range of the rest.
    """
    array = np.asarray(image.array)
    if modality is None:
        finite = np.isfinite(array)
        values = array if finite.all() else array[finite]
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        scale = 1.0 / max(high - low, 1e-8)
        out = array.astype(np.float32)  # a copy
        if not finite.all():
            out[np.isposinf(array)] = high
            out[~finite & ~np.isposinf(array)] = low
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: clipped to 0 or 1 below
            out -= np.float32(low)
            out *= np.float32(scale)
        np.clip(out, 0.0, 1.0, out=out)
        return out if image.channels in (1, 3) else normalize_for_sam(out, "mri", channel_axis=-1)
    if image.channels == 1:
        return get_normalizer(modality)(array[None].astype(np.float32))[0]
    return normalize_for_sam(array, modality, channel_axis=-1)


def prompt_pixels(array: np.ndarray, prompt: Prompt, z: int | None) -> np.ndarray:
    """The pixels ``prompt`` looks at in ``array`` (``[z, y, x, ...]`` for a volume, with ``z`` given): its box
    region, or the whole slice for clicks, text and exemplars."""
    plane = array[z] if z is not None else array
    box = prompt.box
    if box is None:
        return plane
    x0, y0 = max(0, int(np.floor(box.x0))), max(0, int(np.floor(box.y0)))
    return plane[y0 : int(np.ceil(box.y1)) + 1, x0 : int(np.ceil(box.x1)) + 1]


def blank_reason(pixels: np.ndarray, channels: int = 1) -> str | None:
    """Why ``pixels`` (channels last when ``channels`` > 1) hold nothing to segment: ``"no finite values"``
    or ``"constant intensity"`` (NaN and inf ignored); None when they vary."""
    values = np.asarray(pixels, dtype=np.float64).reshape(-1, channels)
    finite = np.isfinite(values)
    if not finite.any():
        return "no finite values"
    low = np.min(values, axis=0, where=finite, initial=np.inf)
    high = np.max(values, axis=0, where=finite, initial=-np.inf)
    return "constant intensity" if np.all(high <= low) else None


def blank_error(place: str, reason: str, label: int | None = None) -> EmptyResultError:
    """The one-line "nothing found" error for a blank prompt region (``place``: "slice 12", "the image")."""
    found = f"found nothing for object {label}: " if label is not None else ""
    return EmptyResultError(f"{found}{place} is blank ({reason}) under the prompt: nothing to segment")


def _nbytes(value) -> int:
    """Bytes of the arrays/tensors in ``value`` (nested dicts, lists and tuples are walked)."""
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if hasattr(value, "nbytes"):  # numpy arrays and torch tensors
        return int(value.nbytes)
    return 0


class Predictor:
    """Promptable segmentation of one image or volume with a cached embedding per slice.

    ``embedding_store``: a folder or `EmbeddingStore` keeping embeddings on disk across runs; None (default) uses
    ``$ONCOSEG_EMBEDDING_CACHE`` when set; False never stores."""

    def __init__(
        self,
        backend: str | Backend = "litemedsam",
        cache_slices: int = 64,
        embedding_store: EmbeddingStore | str | os.PathLike | bool | None = None,
        **backend_kwargs,
    ):
        self.backend = load_backend(backend, **backend_kwargs) if isinstance(backend, str) else backend
        self.store = resolve_store(embedding_store)
        self.cache_slices = cache_slices
        self._cache: OrderedDict[int | None, ImageEmbedding] = OrderedDict()
        self.image: MedicalImage | None = None
        self.modality: str | None = None
        self._pixels: np.ndarray | None = None

    def set_image(self, image: MedicalImage | np.ndarray, modality: str | None = None) -> None:
        """Use ``image`` for the next predictions (a MedicalImage, or a ``[H, W]``/``[H, W, 3]`` array)."""
        if not isinstance(image, MedicalImage):
            array = np.asarray(image)
            channels = array.shape[-1] if array.ndim == 3 and array.shape[-1] in (3, 4) else 1
            if channels == 4:
                array, channels = array[..., :3], 3
            image = MedicalImage.from_array(array, channels=channels)
        if min(image.shape) < 2:
            raise OncoSegError(f"image of shape {image.shape} is too small to segment")
        chosen = modality or image.modality
        self.modality = canonical_modality(chosen) if chosen else None
        self.image = image
        native = self.modality in self.backend.native_intensity_modalities
        self._pixels = normalise_image(image, None if native else self.modality)
        self._cache.clear()

    def _require_image(self) -> MedicalImage:
        if self.image is None:
            raise OncoSegError("no image set: call set_image() first")
        return self.image

    def slice_pixels(self, z: int | None) -> np.ndarray:
        """The normalised ``[H, W, 3]`` pixels of slice ``z`` (``None`` for a 2D image)."""
        image = self._require_image()
        pixels = self._pixels[z] if image.is_3d else self._pixels
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        return pixels

    def blank_reason(self, prompt: Prompt, z: int | None = None) -> str | None:
        """Why the pixels under ``prompt`` on slice ``z`` (default: its own) hold nothing to segment, in the
        image as given or as the model sees it after intensity normalisation; None when there is something."""
        image = self._require_image()
        z = (prompt.z if z is None else z) if image.is_3d else None
        if image.is_3d and (z is None or not 0 <= z < image.num_slices):
            return None  # no slice to look at: `predict` names the problem
        reason = blank_reason(prompt_pixels(image.array, prompt, z), image.channels)
        if reason is None and blank_reason(
            prompt_pixels(self._pixels, prompt, z), 1 if self._pixels.ndim == image.ndim else 3
        ):
            reason = "constant after intensity normalisation"
        return reason

    def embedding(self, z: int | None = None) -> ImageEmbedding:
        """The backend's embedding of slice ``z``, computed once and cached."""
        image = self._require_image()
        key = z if image.is_3d else None
        if image.is_3d and (z is None or not 0 <= z < image.num_slices):
            raise PromptError(f"slice {z} is outside the volume (slices 0..{image.num_slices - 1})")
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        embedding = self._encode(self.slice_pixels(key))
        self._cache[key] = embedding
        while len(self._cache) > self.cache_slices:
            self._cache.popitem(last=False)
        return embedding

    def _encode(self, pixels: np.ndarray) -> ImageEmbedding:
        """The backend's embedding of ``pixels``: from the on-disk store when it holds them, else encoded (and
        stored)."""
        identity = self.backend.embedding_identity() if self.store is not None else None
        if identity is None:
            return self.backend.encode(pixels)
        store_key = self.store.key(pixels, identity)
        embedding = self.store.load(store_key, original_size=pixels.shape[:2])
        if embedding is None:
            embedding = self.backend.encode(pixels)
            self.store.save(store_key, embedding)
        return embedding

    def is_cached(self, z: int | None = None) -> bool:
        """Whether slice ``z``'s embedding is in the cache (a prediction there only runs the decoder)."""
        return (z if self.image is not None and self.image.is_3d else None) in self._cache

    @property
    def pixels_nbytes(self) -> int:
        """Memory held by the normalised copy of the image made by `set_image`."""
        return 0 if self._pixels is None else int(self._pixels.nbytes)

    @property
    def cache_nbytes(self) -> int:
        """Memory held by the cached embeddings (features and the backend's per-image decoder state)."""
        return sum(_nbytes(e.features) + _nbytes(e.cache) for e in self._cache.values())

    def trim_cache(self, max_bytes: int, keep: int = 0) -> int:
        """Drop least recently used embeddings until at most ``max_bytes`` remain (always keeping the ``keep``
        most recent ones); returns the number dropped. The service uses it to share one memory budget."""
        dropped = 0
        while len(self._cache) > keep and self.cache_nbytes > max_bytes:
            self._cache.popitem(last=False)
            dropped += 1
        return dropped

    def predict(
        self, prompts: Prompt | Sequence[Prompt], z: int | None = None, mask_input: np.ndarray | None = None
    ) -> MaskPrediction:
        """Masks for one prompt or several (one mask each) on slice ``z`` (or the prompts' own slice)."""
        image = self._require_image()
        prompts = [prompts] if isinstance(prompts, Prompt) else list(prompts)
        if not prompts:
            raise PromptError("no prompt given: pass a box or at least one point")
        if image.is_3d:
            slices = {p.z for p in prompts if p.z is not None}
            if z is None and len(slices) == 1:
                z = slices.pop()
            prompts = [p.on_slice(z) for p in prompts]
        if any(p.is_concept for p in prompts) and not self.backend.supports_text:
            raise PromptError(
                f"the {self.backend.name} backend has no text or exemplar prompts (use --backend sam3)"
            )
        for prompt in prompts:
            validate_prompt(prompt, image.shape)
        answer = self.backend.decode(self.embedding(z), prompts, mask_input=mask_input)
        if len(prompts) == 1 and prompts[0].box is None and self.modality == "ct" and image.channels == 1:
            answer = prefer_clicked_tissue(
                answer,
                image.array[z] if image.is_3d else image.array,
                prompts[0],
                smaller=lambda: self.backend.decode(
                    self.embedding(z), [Prompt(box=b) for b in small_boxes(prompts[0], image)]
                ),
            )
        return answer


# half-widths (mm, each way from the clicks) of the small boxes `prefer_clicked_tissue` decodes when no mask the
# model offers for a click is of the clicked tissue. Chosen on the 3 mm TotalSegmentator example CT alone (its
# organ clicks and 72 discs drawn into its liver and spleen; `benchmarks/ct_clicks.py --sweep`): without the 3 mm
# box the drawn spots are mostly missed, and 3/12 ties 3/8/18 with one decode less
SMALL_BOX_MM = (3.0, 12.0)


def small_boxes(prompt: Prompt, image: MedicalImage) -> list[Box]:
    """Boxes reaching `SMALL_BOX_MM` beyond ``prompt``'s include clicks (all clicks when none include), converted
    with the image's in-plane spacing (pixels for an image without one: 1 mm per pixel) and clipped to it."""
    clicks = [p for p in prompt.points if p.positive] or list(prompt.points)
    x0, x1 = min(p.x for p in clicks), max(p.x for p in clicks)
    y0, y1 = min(p.y for p in clicks), max(p.y for p in clicks)
    height, width = image.shape[-2:]  # single-channel images only (see `Predictor.predict`)
    sx, sy = (float(s) for s in image.spacing[:2])
    return [
        Box(max(0.0, x0 - mm / sx), max(0.0, y0 - mm / sy), min(width - 1.0, x1 + mm / sx),
            min(height - 1.0, y1 + mm / sy))
        for mm in SMALL_BOX_MM
    ]  # fmt: skip


def prefer_clicked_tissue(
    answer: MaskPrediction,
    values: np.ndarray,
    prompt: Prompt,
    smaller: Callable[[], MaskPrediction] | None = None,
) -> MaskPrediction:
    """On CT, clicks alone: of the masks that answer the clicks (the model's choice and its ``alternatives``),
    the one whose density is closest to the clicked tissue's, i.e. the smallest ``|median - clicked| / spread``
    (robust spread, at least 20 HU; clicked: the median HU of the 3×3 pixels around each include click), when
    that distance is at most 1. The model's own choice is the best-scoring mask, which on CT is mostly a large
    region around the organ (without the limit of 1, a click on a contrast-filled vessel took a heterogeneous
    region of half the abdomen).

    When no offered mask is of the clicked tissue (a small vessel or spot inside an organ: every mask the model
    offers is the organ or larger), ``smaller()`` is asked for more candidates (`Predictor.predict`: the boxes of
    `small_boxes`, decoded in one pass, only then) and the best-scoring one of the clicked tissue is taken; if
    none is, the model's choice stands. A click on a homogeneous organ has a mask of its tissue among the
    model's, so it never reaches the small boxes. ``benchmarks/ct_clicks.py --threads 1 --sweep`` (slice Dice;
    sizes chosen on the 3 mm example CT, reported on the DICOM one): organ clicks, model 0.24 / old rule 0.445 /
    with small boxes 0.484 on the DICOM CT (3 organs better, none worse), 0.443 -> 0.460 on the 3 mm one; the
    DICOM CT's 4 contrast-filled liver vessels 0.005 -> 0.38, 72 discs drawn into the 3 mm CT's liver and
    spleen 0.32 -> 0.74. Cost when the boxes are decoded: two more decoder prompts (about 20 ms each, 1 thread). The other
    masks stay ``alternatives`` (smallest first, near-duplicates dropped), so Smaller/Larger still reach the
    model's choice."""
    options = [(answer.masks[0], float(answer.scores[0])), *answer.alternatives]
    clicks = [p for p in prompt.points if p.positive] or list(prompt.points)
    if not clicks or (len(options) < 2 and smaller is None):
        return answer
    pixels = [(int(np.rint(p.y)), int(np.rint(p.x))) for p in clicks]
    around = [values[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] for y, x in pixels]
    clicked = float(np.median(np.concatenate([a.ravel() for a in around]).astype(np.float64)))
    if not np.isfinite(clicked):
        return answer

    def distance(mask: np.ndarray) -> float:
        inside = values[mask].astype(np.float64)
        inside = inside[np.isfinite(inside)]
        if not inside.size:
            return np.inf
        centre = float(np.median(inside))
        spread = 1.4826 * float(np.median(np.abs(inside - centre)))
        return abs(centre - clicked) / max(spread, 20.0)

    distances = [distance(mask) for mask, _ in options]
    best = int(np.argmin(distances))
    if distances[best] <= 1.0:
        if best == 0:
            return answer
        chosen, pool = options[best], options
    elif smaller is not None:  # no offered mask of the clicked tissue: look smaller
        extra = smaller()
        found = [(m, float(s)) for m, s in zip(extra.masks, extra.scores, strict=True) if distance(m) <= 1.0]
        if not found:
            return answer  # nothing of the clicked tissue at any size: the model's choice stands
        chosen, pool = max(found, key=lambda o: o[1]), [*options, *found]
    else:
        return answer
    rest: list[tuple[np.ndarray, float]] = []
    for other in sorted((o for o in pool if o is not chosen), key=lambda o: -o[1]):
        if other[0].any() and all(_iou(other[0], kept) < 0.85 for kept in [chosen[0], *(r[0] for r in rest)]):
            rest.append(other)
    return MaskPrediction(
        masks=chosen[0][None],
        scores=np.array([chosen[1]], dtype=np.float32),
        logits=None,
        alternatives=tuple(sorted(rest, key=lambda o: int(o[0].sum()))),
    )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0

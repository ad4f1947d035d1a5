"""`Predictor`: set an image (2D or a volume) once, then ask for masks from prompts many times.

The image is normalised once for its modality (one intensity mapping for a whole volume) and each slice's
embedding is computed on first use and kept in a bounded LRU cache, so repeated clicks on a slice only run the
light mask decoder.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from oncoseg.errors import OncoSegError, PromptError
from oncoseg.image import MedicalImage
from oncoseg.models import Backend, ImageEmbedding, MaskPrediction, load_backend
from oncoseg.preprocess import canonical_modality, get_normalizer, normalize_for_sam
from oncoseg.prompts import Prompt, validate_prompt


def normalise_image(image: MedicalImage, modality: str | None) -> np.ndarray:
    """Pixels in [0, 1]: ``[..., 3]`` for multi-channel images, single-channel ``[z, y, x]``/``[y, x]`` otherwise.

    ``modality=None`` scales the whole image by its finite min and max (what LiteMedSAM itself does).
    """
    array = np.asarray(image.array)
    if modality is None:
        array = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(array.min()), float(array.max())
        out = (array - low) / max(high - low, 1e-8)
        return out if image.channels in (1, 3) else normalize_for_sam(out, "mri", channel_axis=-1)
    if image.channels == 1:
        return get_normalizer(modality)(array[None].astype(np.float32))[0]
    return normalize_for_sam(array, modality, channel_axis=-1)


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
    """Promptable segmentation of one image or volume with a cached embedding per slice."""

    def __init__(self, backend: str | Backend = "litemedsam", cache_slices: int = 64, **backend_kwargs):
        self.backend = load_backend(backend, **backend_kwargs) if isinstance(backend, str) else backend
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

    def embedding(self, z: int | None = None) -> ImageEmbedding:
        """The backend's embedding of slice ``z``, computed once and cached."""
        image = self._require_image()
        key = z if image.is_3d else None
        if image.is_3d and (z is None or not 0 <= z < image.num_slices):
            raise PromptError(f"slice {z} is outside the volume (slices 0..{image.num_slices - 1})")
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        embedding = self.backend.encode(self.slice_pixels(key))
        self._cache[key] = embedding
        while len(self._cache) > self.cache_slices:
            self._cache.popitem(last=False)
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
        return self.backend.decode(self.embedding(z), prompts, mask_input=mask_input)

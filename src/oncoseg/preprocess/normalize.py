"""The ten modality intensity normalisers (preprint section 2.3), as MONAI-compatible transforms.

Every normaliser takes a channel-first image ``(C, *spatial)`` (numpy array or torch tensor) and returns the
same kind, float32, in ``[0, 1]`` and always finite:

* NaN becomes 0 and ``±inf`` becomes 1 / 0 (they are clipped to the upper / lower bound); percentiles are taken
  over the finite values only, and an image (or channel) with no finite values, or a constant one, gives zeros.
* Percentiles are estimated on a deterministic subsample: every ``s``-th voxel along each spatial axis, with
  ``s`` chosen so that about ``MAX_PERCENTILE_SAMPLES`` (one million) voxels are used. A 512×512×300 CT or MRI
  volume therefore costs one sort of ~1e6 values instead of ~8e7.
* Values beyond ``±1e300`` are treated as ``±1e300`` so that differences of bounds cannot overflow.

Each transform is a plain callable (``monai.transforms.Compose`` takes it as it is) and has a dictionary twin
(``NormalizeCTd(keys=["image"])``, in `oncoseg.preprocess.dictionary`). This module does not import MONAI:
importing MONAI takes about 10 s and 0.3 GB (it loads transformers and torchvision), which the inference path
(CLI, service, napari) does not pay.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from oncoseg.errors import OncoSegError

MAX_PERCENTILE_SAMPLES = 1_000_000
_LIMIT = 1e300


def _window(width: float, level: float) -> tuple[float, float]:
    return (level - width / 2, level + width / 2)


# Model-input windows (low, high HU) that clip CT before it is scaled for the network; the display windows a
# person looks at are another table, `oncoseg.render.CT_PRESETS`.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "default": (-1000.0, 1000.0),
    "soft_tissue": _window(400, 40),
    "lung": _window(1500, -600),
    "bone": _window(1800, 400),
    "liver": _window(150, 30),
    "brain": _window(80, 40),
}


def _subsample(x: np.ndarray) -> np.ndarray:
    """A regular-grid view of ``x`` (channel axis first, kept whole) with about MAX_PERCENTILE_SAMPLES values."""
    spatial = x.ndim - 1
    if x.size <= MAX_PERCENTILE_SAMPLES or spatial == 0:
        return x
    step = math.ceil((x.size / MAX_PERCENTILE_SAMPLES) ** (1 / spatial))
    return x[(slice(None),) + (slice(None, None, step),) * spatial]


def percentile_bounds(x: np.ndarray, lower: float, upper: float) -> tuple[float, float]:
    """The ``lower`` and ``upper`` percentiles of the finite values of ``x`` (channel axis first).

    Returns ``(0.0, 0.0)`` when ``x`` has no finite value.
    """
    sample = _subsample(x).ravel()
    sample = np.clip(sample[np.isfinite(sample)], -_LIMIT, _LIMIT)
    if sample.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(sample, [lower, upper])
    return float(low), float(high)


def clip_finite(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip the float64 array ``x`` to ``[low, high]`` in place (NaN and -inf become ``low``, +inf ``high``)."""
    np.fmax(x, low, out=x)  # fmax/fmin pick the number over NaN
    return np.fmin(x, high, out=x)


def scale_to_unit(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly onto ``[0, 1]``, in place on the float64 array ``x``, and return ``x``.

    Values are clipped to the range first (see `clip_finite`); an empty range (``high <= low``) gives zeros.
    """
    if not high > low:
        x.fill(0.0)
        return x
    clip_finite(x, low, high)
    x -= low
    x /= high - low
    return x


def percentile_scale(x: np.ndarray, lower: float, upper: float, channel_wise: bool) -> np.ndarray:
    """Clip the float64 channel-first array ``x`` to its percentiles and scale to ``[0, 1]``, in place.

    With ``channel_wise`` each channel gets its own bounds; otherwise one pair of bounds is taken over the whole
    image. Percentiles are always taken over all spatial axes (a whole volume, not slice by slice).
    """
    for part in [channel[None] for channel in x] if channel_wise else [x]:
        scale_to_unit(part, *percentile_bounds(part, lower, upper))
    return x


def _check_percentiles(lower: float, upper: float) -> None:
    if not 0 <= lower < upper <= 100:
        raise OncoSegError(
            f"percentiles must satisfy 0 <= lower < upper <= 100, got lower={lower}, upper={upper}"
        )


class _Normalize:
    """Shared plumbing: numpy/torch in, same kind out (a MONAI ``MetaTensor`` keeps its metadata), float32,
    channel-first."""

    def __call__(self, img: Any) -> Any:
        is_tensor = isinstance(img, torch.Tensor)
        array = img.detach().cpu().numpy() if is_tensor else np.asarray(img)
        if array.ndim < 2:
            raise OncoSegError(
                f"{type(self).__name__} expects a channel-first image (C, *spatial), got shape {array.shape}"
            )
        out = self.normalize(np.array(array, dtype=np.float64, order="C")).astype(np.float32)
        if not is_tensor:
            return out
        # a float32 copy of the input tensor (same subclass, device and metadata) with the new values
        return img.detach().to(dtype=torch.float32, copy=True).copy_(torch.from_numpy(out))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Normalise the float64 channel-first array ``x`` (a private copy: may be changed in place)."""
        raise NotImplementedError


class _PercentileNormalize(_Normalize):
    """Clip to the ``lower``–``upper`` percentiles and scale linearly to ``[0, 1]``."""

    channel_wise = True

    def __init__(self, lower: float, upper: float) -> None:
        _check_percentiles(lower, upper)
        self.lower = lower
        self.upper = upper

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return percentile_scale(x, self.lower, self.upper, self.channel_wise)


class NormalizeCT(_Normalize):
    """Clip Hounsfield units to a window and scale linearly to ``[0, 1]``.

    ``window`` is ``(low, high)`` in HU or the name of a preset in ``CT_WINDOWS``; the default is the preprint's
    ``[-1000, 1000]`` (so -1000 HU → 0, 0 HU → 0.5, 1000 HU and above → 1).
    """

    def __init__(self, window: tuple[float, float] | str = CT_WINDOWS["default"]) -> None:
        if isinstance(window, str):
            if window not in CT_WINDOWS:
                raise OncoSegError(f"unknown CT window {window!r}; expected one of: {', '.join(CT_WINDOWS)}")
            window = CT_WINDOWS[window]
        low, high = (float(v) for v in window)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise OncoSegError(f"CT window must be finite (low, high) with low < high, got {window}")
        self.window = (low, high)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return scale_to_unit(x, *self.window)


class NormalizeMRI(_PercentileNormalize):
    """MRI: clip each channel (sequence) to its 1st–99th percentiles, scale to ``[0, 1]``."""

    def __init__(self, lower: float = 1.0, upper: float = 99.0) -> None:
        super().__init__(lower, upper)


class NormalizeUltrasound(_PercentileNormalize):
    """Ultrasound: one 2nd–98th percentile window over the whole image (robust to speckle extremes)."""

    channel_wise = False

    def __init__(self, lower: float = 2.0, upper: float = 98.0) -> None:
        super().__init__(lower, upper)


class NormalizeDermoscopy(_PercentileNormalize):
    """Dermoscopy: 1st–99th percentiles per RGB channel."""

    def __init__(self, lower: float = 1.0, upper: float = 99.0) -> None:
        super().__init__(lower, upper)


class NormalizeEndoscopy(_PercentileNormalize):
    """Endoscopy / colonoscopy: 5th–95th percentiles per RGB channel (tames specular highlights)."""

    def __init__(self, lower: float = 5.0, upper: float = 95.0) -> None:
        super().__init__(lower, upper)


class NormalizeXRay(_PercentileNormalize):
    """Radiographs: one 1st–99th percentile window over the whole image (wide dynamic range compression)."""

    channel_wise = False

    def __init__(self, lower: float = 1.0, upper: float = 99.0) -> None:
        super().__init__(lower, upper)


class NormalizePET(_PercentileNormalize):
    """PET (SUV): one 0–99.5th percentile window over the whole image, bounds floored at SUV 0.

    Negative SUVs (reconstruction noise) therefore map to 0; NaN maps to 0, +inf to 1.
    """

    channel_wise = False

    def __init__(self, lower: float = 0.0, upper: float = 99.5) -> None:
        super().__init__(lower, upper)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        low, high = percentile_bounds(x, self.lower, self.upper)
        return scale_to_unit(x, max(low, 0.0), max(high, 0.0))


class NormalizeMammo(_PercentileNormalize):
    """Mammography: one 0.5–99.5th percentile window over the whole image (varying exposure settings)."""

    channel_wise = False

    def __init__(self, lower: float = 0.5, upper: float = 99.5) -> None:
        super().__init__(lower, upper)


class NormalizeCXR(_PercentileNormalize):
    """Chest X-ray: one 1st–99th percentile window over the whole image, then an optional gamma ``x ** gamma``.

    With the default ``gamma=1`` it equals ``NormalizeXRay``; ``gamma < 1`` brightens the lung fields.
    No histogram equalisation (CLAHE) is applied.
    """

    channel_wise = False

    def __init__(self, lower: float = 1.0, upper: float = 99.0, gamma: float = 1.0) -> None:
        super().__init__(lower, upper)
        if not (math.isfinite(gamma) and gamma > 0):
            raise OncoSegError(f"CXR gamma must be a positive number, got {gamma}")
        self.gamma = gamma

    def normalize(self, x: np.ndarray) -> np.ndarray:
        x = super().normalize(x)
        if self.gamma != 1.0:
            np.power(x, self.gamma, out=x)
        return x


class NormalizeSRH(_Normalize):
    """Stimulated Raman histology: ``log1p`` per channel, then min–max per channel to ``[0, 1]``.

    Channels with negative values are shifted so their minimum is 0 before the log; non-negative channels are
    used as they are (``log1p(x)``), so the log compresses the raw dynamic range.
    """

    def normalize(self, x: np.ndarray) -> np.ndarray:
        for channel in x:
            low, high = percentile_bounds(channel[None], 0.0, 100.0)
            shift = min(low, 0.0)
            clip_finite(channel, low, high)
            channel -= shift
            np.log1p(channel, out=channel)
            scale_to_unit(channel, math.log1p(low - shift), math.log1p(high - shift))
        return x

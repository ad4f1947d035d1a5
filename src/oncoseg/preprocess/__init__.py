"""Modality intensity normalisation and channel selection before a SAM backend.

`normalize_for_sam` is the one call the model stage needs: an image as Onco-Seg stores it (channels last) in,
float32 in ``[0, 1]`` with exactly 3 channels last out. The per-backend SAM normalisation (mean/std or
``(x - 0.5) / 0.5``) is applied by the model stage, not here.

MONAI is imported only for the dictionary twins (``NormalizeCTd`` ...), loaded from
`oncoseg.preprocess.dictionary` on first use: the inference path does not pay MONAI's 10 s import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from oncoseg.errors import OncoSegError
from oncoseg.modality import MODALITIES, canonical_modality
from oncoseg.preprocess.channels import CHANNEL_MODES, SelectMedicalChannels
from oncoseg.preprocess.normalize import (
    CT_WINDOWS,
    MAX_PERCENTILE_SAMPLES,
    NormalizeCT,
    NormalizeCXR,
    NormalizeDermoscopy,
    NormalizeEndoscopy,
    NormalizeMammo,
    NormalizeMRI,
    NormalizePET,
    NormalizeSRH,
    NormalizeUltrasound,
    NormalizeXRay,
    _Normalize,
    percentile_bounds,
    percentile_scale,
    scale_to_unit,
)

NORMALIZERS: dict[str, type[_Normalize]] = {
    "ct": NormalizeCT,
    "mri": NormalizeMRI,
    "ultrasound": NormalizeUltrasound,
    "dermoscopy": NormalizeDermoscopy,
    "endoscopy": NormalizeEndoscopy,
    "xray": NormalizeXRay,
    "pet": NormalizePET,
    "mammography": NormalizeMammo,
    "cxr": NormalizeCXR,
    "srh": NormalizeSRH,
}
assert MODALITIES == tuple(NORMALIZERS)


_DICTIONARY_TWINS = {
    f"{name}d" for name in (*(cls.__name__ for cls in NORMALIZERS.values()), "SelectMedicalChannels")
}


def __getattr__(name: str) -> Any:
    """The dictionary twins, imported (with MONAI) on first use."""
    if name in _DICTIONARY_TWINS:
        from oncoseg.preprocess import dictionary

        return getattr(dictionary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_normalizer(modality: str, **kwargs: Any) -> _Normalize:
    """The normalising transform for ``modality`` (any alias), built with ``kwargs`` (e.g. ``window="lung"``)."""
    return NORMALIZERS[canonical_modality(modality)](**kwargs)


def normalize_for_sam(
    array: np.ndarray,
    modality: str,
    channel_axis: int | None = -1,
    channel_mode: str | None = None,
    **normalizer_kwargs: Any,
) -> np.ndarray:
    """Normalise an image for a SAM backend: float32 in ``[0, 1]``, exactly 3 channels on the last axis.

    ``array`` is ``[y, x]``, ``[y, x, c]``, ``[z, y, x]`` or ``[z, y, x, c]``; ``channel_axis`` says where the
    channels are, ``None`` for a single-channel image (e.g. a CT volume ``[z, y, x]`` → ``[z, y, x, 3]``).
    Percentiles are taken over the whole image or volume, so all slices share one intensity mapping.

    Channels are then selected with `SelectMedicalChannels` in ``channel_mode``; by default a 2-channel MRI is
    taken as ``[FLAIR, T1c]`` (mode "flair_t1c") and every other input follows "t1_t1gd_flair" (BraTS 4-channel
    → [T1w, T1gd, FLAIR], 2-channel SRH → [lipids, proteins, proteins], 1 channel → replicated).
    """
    modality = canonical_modality(modality)
    array = np.asarray(array)
    if channel_axis is not None and not -array.ndim <= channel_axis < array.ndim:
        raise OncoSegError(f"channel_axis={channel_axis} is outside an image of shape {array.shape}")
    image = array[None] if channel_axis is None else np.moveaxis(array, channel_axis, 0)
    if image.ndim not in (3, 4):
        raise OncoSegError(
            f"image of shape {array.shape} with channel_axis={channel_axis} is not 2D or 3D "
            "(pass channel_axis=None for an image without a channel axis)"
        )
    if not 1 <= image.shape[0] <= 4:
        raise OncoSegError(
            f"image of shape {array.shape} has {image.shape[0]} channels on channel_axis={channel_axis}; "
            "expected 1-4 (pass channel_axis=None for a single-channel image)"
        )
    if channel_mode is None:
        channel_mode = "flair_t1c" if modality == "mri" and image.shape[0] == 2 else "t1_t1gd_flair"
    normalized = get_normalizer(modality, **normalizer_kwargs)(image)
    return np.ascontiguousarray(np.moveaxis(SelectMedicalChannels(channel_mode)(normalized), 0, -1))


__all__ = [
    "CHANNEL_MODES",
    "CT_WINDOWS",
    "MAX_PERCENTILE_SAMPLES",
    "MODALITIES",
    "NORMALIZERS",
    "NormalizeCT",
    "NormalizeCTd",
    "NormalizeCXR",
    "NormalizeCXRd",
    "NormalizeDermoscopy",
    "NormalizeDermoscopyd",
    "NormalizeEndoscopy",
    "NormalizeEndoscopyd",
    "NormalizeMRI",
    "NormalizeMRId",
    "NormalizeMammo",
    "NormalizeMammod",
    "NormalizePET",
    "NormalizePETd",
    "NormalizeSRH",
    "NormalizeSRHd",
    "NormalizeUltrasound",
    "NormalizeUltrasoundd",
    "NormalizeXRay",
    "NormalizeXRayd",
    "SelectMedicalChannels",
    "SelectMedicalChannelsd",
    "canonical_modality",
    "get_normalizer",
    "normalize_for_sam",
    "percentile_bounds",
    "percentile_scale",
    "scale_to_unit",
]

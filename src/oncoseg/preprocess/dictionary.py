"""Dictionary twins of the normalisers and the channel selector, for ``monai.transforms.Compose`` pipelines on
dictionaries (``NormalizeCTd(keys=["image"])``). The only preprocessing module that imports MONAI; import it
from here or from `oncoseg.preprocess`, which loads it on first use."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from oncoseg.preprocess.channels import SelectMedicalChannels
from oncoseg.preprocess.normalize import (
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
)


class _NormalizeDict(MapTransform):
    """Dictionary twin: applies ``transform_class(**kwargs)`` to each of ``keys``."""

    transform_class: type

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = self.transform_class(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


class NormalizeCTd(_NormalizeDict):
    transform_class = NormalizeCT


class NormalizeMRId(_NormalizeDict):
    transform_class = NormalizeMRI


class NormalizeUltrasoundd(_NormalizeDict):
    transform_class = NormalizeUltrasound


class NormalizeDermoscopyd(_NormalizeDict):
    transform_class = NormalizeDermoscopy


class NormalizeEndoscopyd(_NormalizeDict):
    transform_class = NormalizeEndoscopy


class NormalizeXRayd(_NormalizeDict):
    transform_class = NormalizeXRay


class NormalizePETd(_NormalizeDict):
    transform_class = NormalizePET


class NormalizeMammod(_NormalizeDict):
    transform_class = NormalizeMammo


class NormalizeCXRd(_NormalizeDict):
    transform_class = NormalizeCXR


class NormalizeSRHd(_NormalizeDict):
    transform_class = NormalizeSRH


class SelectMedicalChannelsd(MapTransform):
    """Dictionary twin of `SelectMedicalChannels`."""

    def __init__(
        self, keys: KeysCollection, mode: str = "t1_t1gd_flair", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.selector = SelectMedicalChannels(mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.selector(d[key])
        return d

"""Dictionary twins of the normalisers and the channel selector, for ``monai.transforms.Compose`` pipelines on
dictionaries (``NormalizeCTd(keys=["image"])``). The only preprocessing module that imports MONAI; import it
from here or from `oncoseg.preprocess`, which loads it on first use."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from oncoseg.preprocess import normalize
from oncoseg.preprocess.channels import SelectMedicalChannels


class _DictionaryTwin(MapTransform):
    """Applies ``transform_class(**kwargs)`` to each of ``keys``."""

    transform_class: type

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = self.transform_class(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class NormalizeCTd(_DictionaryTwin):
    transform_class = normalize.NormalizeCT


class NormalizeMRId(_DictionaryTwin):
    transform_class = normalize.NormalizeMRI


class NormalizeUltrasoundd(_DictionaryTwin):
    transform_class = normalize.NormalizeUltrasound


class NormalizeDermoscopyd(_DictionaryTwin):
    transform_class = normalize.NormalizeDermoscopy


class NormalizeEndoscopyd(_DictionaryTwin):
    transform_class = normalize.NormalizeEndoscopy


class NormalizeXRayd(_DictionaryTwin):
    transform_class = normalize.NormalizeXRay


class NormalizePETd(_DictionaryTwin):
    transform_class = normalize.NormalizePET


class NormalizeMammod(_DictionaryTwin):
    transform_class = normalize.NormalizeMammo


class NormalizeCXRd(_DictionaryTwin):
    transform_class = normalize.NormalizeCXR


class NormalizeSRHd(_DictionaryTwin):
    transform_class = normalize.NormalizeSRH


class SelectMedicalChannelsd(_DictionaryTwin):
    """Dictionary twin of `SelectMedicalChannels`."""

    transform_class = SelectMedicalChannels

    def __init__(
        self, keys: KeysCollection, mode: str = "t1_t1gd_flair", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys, mode=mode)

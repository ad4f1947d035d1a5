"""Onco-Seg: promptable medical image segmentation for cancer care.

The public API is importable from here lazily, so ``import oncoseg`` stays fast:
``segment``, ``Session``, ``Predictor``, ``load_image``, ``save_mask``, ``measure``, ``propagate``, ``load_backend``.
``oncoseg.measure`` is the function (``oncoseg.measure(mask, spacing)``); its module stays importable as
``from oncoseg.measure import measure``.
"""

from importlib import import_module

__version__ = "0.1.0"

# Imported now, not lazily: importing the submodule oncoseg.measure (which any other module may do) sets the
# package attribute ``measure`` to the module, which would then hide the function from __getattr__.
from oncoseg.measure import measure as measure

_EXPORTS = {
    "segment": "oncoseg.api",
    "Session": "oncoseg.session",
    "SegmentationResult": "oncoseg.api",
    "Predictor": "oncoseg.predictor",
    "load_image": "oncoseg.io",
    "save_mask": "oncoseg.io",
    "MedicalImage": "oncoseg.image",
    "propagate": "oncoseg.volume",
    "PropagationSettings": "oncoseg.volume",
    "load_backend": "oncoseg.models",
    "Box": "oncoseg.prompts",
    "Point": "oncoseg.prompts",
    "Prompt": "oncoseg.prompts",
    "OncoSegError": "oncoseg.errors",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'oncoseg' has no attribute {name!r}")


__all__ = list(_EXPORTS)
__all__.append("measure")

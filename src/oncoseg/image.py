"""`MedicalImage`: a pixel array together with its physical geometry.

Conventions used everywhere in Onco-Seg (the same as SimpleITK's):

* ``array`` is indexed ``[z, y, x]`` for volumes and ``[y, x]`` for 2D images; a trailing axis holds
  channels (``[y, x, c]`` or ``[z, y, x, c]``) when ``channels > 1``.
* ``spacing``, ``origin`` and ``direction`` are in ``(x, y, z)`` order (``(x, y)`` for 2D), in millimetres,
  in the DICOM/ITK patient frame (LPS). ``direction`` is the row-major flattened cosine matrix.
* Volumes are reoriented on load so that array axes run x → patient Left, y → Posterior, z → Superior
  (DICOM "LPS"); ``source_orientation`` remembers the file's own orientation so masks are written back in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from oncoseg.errors import ShapeError


@dataclass
class MedicalImage:
    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    modality: str | None = None
    channels: int = 1
    source_path: str | None = None
    source_orientation: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.spacing)

    @property
    def is_3d(self) -> bool:
        return self.ndim == 3

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape in array order (``(z, y, x)`` or ``(y, x)``)."""
        return tuple(self.array.shape[: self.ndim])

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        """Spacing in array-axis order."""
        return tuple(reversed(self.spacing))

    @property
    def num_slices(self) -> int:
        return self.shape[0] if self.is_3d else 1

    def slice(self, index: int) -> np.ndarray:
        """One axial slice (``[y, x]`` or ``[y, x, c]``); the 2D image itself for 2D inputs."""
        if not self.is_3d:
            return self.array
        return self.array[index]

    def with_array(self, array: np.ndarray, channels: int = 1) -> MedicalImage:
        """Same geometry, new pixels (e.g. a mask)."""
        if tuple(array.shape[: self.ndim]) != self.shape:
            raise ShapeError(f"array shape {array.shape} does not match image shape {self.shape}")
        return replace(self, array=array, channels=channels, metadata=dict(self.metadata))

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: tuple[float, ...] | None = None,
        modality: str | None = None,
        channels: int = 1,
    ) -> MedicalImage:
        """Wrap a plain array (``[z, y, x]``, ``[y, x]`` or with a trailing channel axis) with unit geometry."""
        array = np.asarray(array)
        ndim = array.ndim - (1 if channels > 1 else 0)
        if ndim not in (2, 3):
            raise ShapeError(f"expected a 2D or 3D array (plus optional channels), got shape {array.shape}")
        spacing = tuple(float(s) for s in (spacing or (1.0,) * ndim))
        direction = tuple(float(v) for v in np.eye(ndim).ravel())
        return cls(array, spacing, (0.0,) * ndim, direction, modality=modality, channels=channels)

    def describe(self) -> dict[str, Any]:
        """Shape, spacing and modality as plain values (what `oncoseg info` prints)."""
        return {
            "shape": list(self.shape),
            "channels": self.channels,
            "spacing_mm": [round(s, 4) for s in self.spacing],
            "origin_mm": [round(o, 3) for o in self.origin],
            "orientation": self.source_orientation,
            "modality": self.modality,
            "dtype": str(self.array.dtype),
        }

"""`MedicalImage`: a pixel array together with its physical geometry.

Conventions used everywhere in Onco-Seg (the same as SimpleITK's):

* ``array`` is indexed ``[z, y, x]`` for volumes and ``[y, x]`` for 2D images; a trailing axis holds
  channels (``[y, x, c]`` or ``[z, y, x, c]``) when ``channels > 1``.
* ``spacing``, ``origin`` and ``direction`` are in ``(x, y, z)`` order (``(x, y)`` for 2D), in millimetres,
  in the DICOM/ITK patient frame (LPS). ``direction`` is the row-major flattened cosine matrix.
* Pictures without a physical pixel size (PNG/JPEG/TIFF/BMP, a plain array, DICOM without PixelSpacing) have
  spacing 1 and ``spacing_unit`` "px": their measurements are in pixels, never millimetres.
* Volumes are reoriented on load so that array axes run x → patient Left, y → Posterior, z → Superior
  (DICOM "LPS"); ``source_orientation`` remembers the file's own orientation so masks are written back in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from oncoseg.errors import OncoSegError, ShapeError


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
    def spacing_unit(self) -> str:
        """ "mm" when ``spacing`` is a physical size, "px" when the image has none (``metadata["spacing_unit"]``)."""
        return self.metadata.get("spacing_unit", "mm")

    def with_spacing(self, spacing: tuple[float, ...] | str) -> MedicalImage:
        """This picture with a physical pixel size given by the user (mm, ``(x, y[, z])`` or "X,Y[,Z]");
        refused for an image that has its own."""
        if self.spacing_unit != "px":
            raise OncoSegError(
                f"the image has its own spacing ({' x '.join(f'{s:g}' for s in self.spacing)} mm): --spacing is "
                "for pictures without one (PNG, JPEG, TIFF, BMP)"
            )
        values = parse_spacing(spacing, self.ndim)
        return replace(self, spacing=values, metadata={**self.metadata, "spacing_unit": "mm"})

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
        """Wrap a plain array (``[z, y, x]``, ``[y, x]`` or with a trailing channel axis); without ``spacing`` (mm)
        its pixels are 1 x 1 and measured in pixels (``spacing_unit`` "px")."""
        array = np.asarray(array)
        ndim = array.ndim - (1 if channels > 1 else 0)
        if ndim not in (2, 3):
            raise ShapeError(f"expected a 2D or 3D array (plus optional channels), got shape {array.shape}")
        unit = "mm" if spacing else "px"
        spacing = tuple(float(s) for s in (spacing or (1.0,) * ndim))
        direction = tuple(float(v) for v in np.eye(ndim).ravel())
        return cls(array, spacing, (0.0,) * ndim, direction, modality=modality, channels=channels,
                   metadata={"spacing_unit": unit})  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """Shape, spacing (in ``spacing_unit``: "mm", or "px" for a picture without a physical pixel size) and
        modality (``modality_source``: "argument", "dicom" or "guessed") as plain values (what `oncoseg info`
        prints)."""
        return {
            "shape": list(self.shape),
            "channels": self.channels,
            "spacing_mm": [round(s, 4) for s in self.spacing],
            "spacing_unit": self.spacing_unit,
            "origin_mm": [round(o, 3) for o in self.origin],
            "orientation": self.source_orientation,
            "modality": self.modality,
            "modality_source": self.metadata.get("modality_source"),
            "dtype": str(self.array.dtype),
        }


def parse_spacing(spacing: tuple[float, ...] | str, ndim: int) -> tuple[float, ...]:
    """A pixel size in mm, ``(x, y[, z])`` or "X,Y[,Z]" (one value: square pixels), as ``ndim`` floats > 0."""
    text = spacing if isinstance(spacing, str) else ",".join(str(v) for v in np.atleast_1d(spacing))
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in values):
        axes = "X,Y,Z" if ndim == 3 else "X,Y"
        raise OncoSegError(f"spacing {text!r}: expected {axes} (or one value), pixel size in mm, each > 0")
    return values

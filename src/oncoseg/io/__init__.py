"""Image I/O: `load_image` reads files and DICOM folders (within `ReadLimits`); `save_mask` and `save_image`
write atomically."""

from oncoseg.io.limits import ReadLimits
from oncoseg.io.read import guess_modality, load_image
from oncoseg.io.write import atomic_write_path, check_mask_path, save_image, save_mask
from oncoseg.modality import MODALITIES

__all__ = [
    "MODALITIES",
    "ReadLimits",
    "atomic_write_path",
    "check_mask_path",
    "guess_modality",
    "load_image",
    "save_image",
    "save_mask",
]

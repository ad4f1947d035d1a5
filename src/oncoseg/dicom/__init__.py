"""DICOM-RT Structure Set and DICOM SEG: write masks over a source CT/MR series, and read them back.

Masks are bool (or 0/1) arrays in exactly the layout `oncoseg.io.load_image(reference)` gives for the source
series folder (``[z, y, x]``, reoriented to LPS), keyed by structure name (TG-263 names are used, see
`oncoseg.dicom.tg263`). Writers write atomically and raise `DicomExportError` (an `OncoSegError`) on masks that
do not fit; readers return ``{name: bool mask}`` in the same layout.
"""

from oncoseg.dicom.reference import DicomExportError, load_reference
from oncoseg.dicom.rtstruct import read_rtstruct, write_rtstruct
from oncoseg.dicom.seg import read_seg, write_seg
from oncoseg.dicom.tg263 import STRUCTURES, default_color, standard_name

__all__ = [
    "STRUCTURES",
    "DicomExportError",
    "default_color",
    "load_reference",
    "read_rtstruct",
    "read_seg",
    "standard_name",
    "write_rtstruct",
    "write_seg",
]

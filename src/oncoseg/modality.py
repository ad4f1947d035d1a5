"""Modality names Onco-Seg knows, and their aliases (kept free of heavy imports)."""

from __future__ import annotations

from oncoseg.errors import OncoSegError

MODALITIES: tuple[str, ...] = (
    "ct",
    "mri",
    "ultrasound",
    "dermoscopy",
    "endoscopy",
    "xray",
    "pet",
    "mammography",
    "cxr",
    "srh",
)

# Other names (compared lower-case, without spaces, "-" or "_"), including DICOM Modality codes (PT, MG, DX, ...).
_ALIASES = {
    "computedtomography": "ct",
    "mr": "mri",
    "magneticresonance": "mri",
    "us": "ultrasound",
    "sonography": "ultrasound",
    "derm": "dermoscopy",
    "dermatoscopy": "dermoscopy",
    "endo": "endoscopy",
    "es": "endoscopy",
    "colonoscopy": "endoscopy",
    "gastroscopy": "endoscopy",
    "radiograph": "xray",
    "radiography": "xray",
    "dx": "xray",
    "cr": "xray",
    "pt": "pet",
    "mammo": "mammography",
    "mammogram": "mammography",
    "mg": "mammography",
    "chestxray": "cxr",
    "chestradiograph": "cxr",
    "stimulatedramanhistology": "srh",
}


def canonical_modality(name: str) -> str:
    """The canonical modality name for ``name`` or an alias ("MR" → "mri", "colonoscopy" → "endoscopy", ...)."""
    key = "".join(str(name).lower().split()).replace("-", "").replace("_", "")
    if key in MODALITIES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    raise OncoSegError(
        f"unknown modality {name!r}; expected one of: {', '.join(MODALITIES)} (or an alias such as MR, US, mammo)"
    )

"""Organs-at-risk contouring of a CT: register an atlas, carry its labels over, refine them with the model.

    from oncoseg.contour import contour, load_atlas, organ_table

    result = contour("ct_dicom_folder/")          # every organ the default atlas has
    result.save("oars.nii.gz")                     # label map + oars.json
    result.omitted                                 # organs asked for and not drawn → why

Names are imported on first use, so ``oncoseg --help`` does not load SimpleITK or the model.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MODEL_REFINED": "organs", "Atlas": "organs", "load_atlas": "organs", "organ_names": "organs",
    "organ_table": "organs", "resolve_organs": "organs",
    "OUTPUT_TYPES": "pipeline", "ContourResult": "pipeline", "contour": "pipeline", "sidecar_path": "pipeline",
    "confidence_text": "pipeline", "OrganEvidence": "evidence", "coverage": "evidence", "weigh": "evidence",
    "RefineSettings": "refine", "refine_priors": "refine",
    "Registration": "registration", "register": "registration", "warp_labels": "registration",
}  # fmt: skip

__all__ = [
    "MODEL_REFINED",
    "OUTPUT_TYPES",
    "Atlas",
    "ContourResult",
    "OrganEvidence",
    "RefineSettings",
    "Registration",
    "confidence_text",
    "contour",
    "coverage",
    "load_atlas",
    "organ_names",
    "organ_table",
    "refine_priors",
    "register",
    "resolve_organs",
    "sidecar_path",
    "warp_labels",
    "weigh",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"oncoseg.contour.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'oncoseg.contour' has no attribute {name!r}")

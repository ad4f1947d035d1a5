"""The organs at risk Onco-Seg knows (TG-263 names and colours), and the atlas that supplies their priors.

The organ list is `oncoseg.dicom.tg263.STRUCTURES`. Which of them the current setup can contour depends on the
atlas: an organ is *supported* when the atlas has a label for it. A supported organ is *refined by the model*
when it is in `MODEL_REFINED` (compact organs with a clear boundary on CT, where a box prompt on each slice
works); the others (thin tubes, small glands, bowel, lung lobes) keep the registered atlas label.

An atlas is a CT, a label map on the same grid and the names of its labels. Point ``--atlas`` (or
``$ONCOSEG_ATLAS``) at a folder holding an ``atlas.json``::

    {"image": "ct.nii.gz", "labels": "labels.nii.gz", "names": {"1": "liver", "2": "spleen"}}

(``names`` may instead be ``"label_map": "map.json"`` plus ``"label_map_key"`` for a nested map; label names
may be TG-263 names or aliases such as TotalSegmentator's). Without ``atlas.json`` a folder laid out like
TotalSegmentator's test data (``example_ct_sm.nii.gz``, ``example_seg.nii.gz``,
``label_map_total_and_total_mr.json``) is read as it is; that is the default, from the data root
(``$ONCOSEG_DATA``, else ``shared/data`` beside the repository, whatever the current folder; see
`oncoseg.data.registry.data_root`) — a demonstration atlas whose labels are another tool's predictions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oncoseg.dicom.tg263 import STRUCTURES, default_color, lookup
from oncoseg.errors import OncoSegError
from oncoseg.image import MedicalImage

ATLAS_ENV = "ONCOSEG_ATLAS"
DEFAULT_ATLAS_FOLDER = "totalsegmentator-example"
TOTALSEGMENTATOR_LAYOUT = {
    "image": "example_ct_sm.nii.gz",
    "labels": "example_seg.nii.gz",
    "label_map": "label_map_total_and_total_mr.json",
    "label_map_key": "total",
}

# Organs whose atlas prior the model refines slice by slice (box from the prior → LiteMedSAM mask). Spleen and
# stomach are left out: refinement lowered their Dice in every check of docs/contour.md (one patient, so weak
# evidence either way).
MODEL_REFINED = frozenset(
    {
        "Liver", "Kidney_L", "Kidney_R", "Heart", "Gallbladder", "Bladder",
        "Lung_L", "Lung_R", "Lungs", "Brain", "A_Aorta", "Femur_Head_L", "Femur_Head_R", "Femur_L", "Femur_R",
    }
)  # fmt: skip


def organ_names() -> list[str]:
    """All TG-263 names in the table, in table order."""
    return [s.name for s in STRUCTURES]


@dataclass
class Atlas:
    """An atlas CT, its label map on the same grid, and label value → TG-263 name (one organ may have several
    values, e.g. when the atlas splits it)."""

    image: MedicalImage
    labels: MedicalImage
    names: dict[int, str]
    source: str = ""
    ignored: list[str] = field(default_factory=list)  # atlas labels that are not organs in the table

    def organs(self) -> list[str]:
        """TG-263 names this atlas has labels for, in table order (with a group such as ``Rib`` when it has
        any of its members: `oncoseg.contour.bones.GROUPS`)."""
        from oncoseg.contour.bones import GROUPS, members

        present = set(self.names.values())
        present |= {group for group in GROUPS if members(group, present)}
        return [name for name in organ_names() if name in present]

    def values(self, organ: str) -> list[int]:
        """The label values of ``organ`` (of all its members for a group such as ``Rib``)."""
        from oncoseg.contour.bones import members

        names = {organ, *members(organ, set(self.names.values()))}
        return [v for v, n in self.names.items() if n in names]

    def mask(self, organ: str) -> np.ndarray:
        """The atlas' own mask of ``organ`` (bool, ``[z, y, x]``)."""
        return np.isin(self.labels.array, self.values(organ))


def resolve_organs(requested: list[str] | None, available: list[str]) -> list[str]:
    """TG-263 names for ``requested`` (names or aliases; None = all ``available``), each checked."""
    if not requested:
        return list(available)
    chosen = []
    for name in requested:
        entry = lookup(name)
        if entry is None:
            raise OncoSegError(f"unknown organ {name!r}: see `oncoseg contour --list` for the names")
        if entry.name not in available:
            raise OncoSegError(
                f"organ {entry.name!r} is not in the atlas; it supports: {', '.join(available) or 'nothing'}"
            )
        if entry.name not in chosen:
            chosen.append(entry.name)
    return chosen


def default_atlas_path() -> Path:
    """``$ONCOSEG_ATLAS``, else the TotalSegmentator example in the data root (`oncoseg.data.registry.data_root`:
    ``$ONCOSEG_DATA``, else beside the repository; never relative to the current folder)."""
    if os.environ.get(ATLAS_ENV):
        return Path(os.environ[ATLAS_ENV])
    from oncoseg.data.registry import data_root

    return data_root() / DEFAULT_ATLAS_FOLDER


def load_atlas(path: str | os.PathLike | None = None) -> Atlas:
    """Read the atlas folder at ``path`` (default: `default_atlas_path`)."""
    from oncoseg.io import load_image

    folder = Path(path) if path is not None else default_atlas_path()
    if not folder.is_dir():
        from oncoseg.data.registry import ENV_VAR

        also = "" if path is not None or os.environ.get(ATLAS_ENV) else f", or ${ENV_VAR} to the data root"
        raise OncoSegError(
            f"atlas folder {folder} not found: pass --atlas DIR (or set ${ATLAS_ENV}) to a folder with atlas.json"
            + also
        )
    spec_file = folder / "atlas.json"
    if spec_file.is_file():
        try:
            spec = json.loads(spec_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise OncoSegError(f"{spec_file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    elif (folder / TOTALSEGMENTATOR_LAYOUT["image"]).is_file():
        spec = dict(TOTALSEGMENTATOR_LAYOUT)
    else:
        raise OncoSegError(f"{folder}: no atlas.json (image, labels, names) in this atlas folder")
    for key in ("image", "labels"):
        if key not in spec:
            raise OncoSegError(f"{folder}: atlas.json lacks {key!r}")
    raw_names = _label_names(spec, folder)
    image = load_image(folder / spec["image"], modality="ct")
    labels = load_image(folder / spec["labels"])
    if labels.shape != image.shape or not np.allclose(labels.spacing, image.spacing, atol=1e-3):
        raise OncoSegError(
            f"{folder}: atlas labels {labels.shape} are not on the atlas CT's grid {image.shape}"
        )
    names, ignored = {}, []
    present = set(np.unique(labels.array).tolist())
    for value, name in raw_names.items():
        entry = lookup(name)
        if value not in present:
            continue
        if entry is None:
            ignored.append(name)
        else:
            names[value] = entry.name
    return Atlas(image, labels, names, str(folder), ignored)


def _label_names(spec: dict, folder: Path) -> dict[int, str]:
    if "names" in spec:
        table = spec["names"]
    elif "label_map" in spec:
        try:
            table = json.loads((folder / spec["label_map"]).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise OncoSegError(f"{folder}: cannot read label map {spec['label_map']} ({exc})") from None
        if spec.get("label_map_key"):
            table = table[spec["label_map_key"]]
    else:
        raise OncoSegError(f"{folder}: atlas.json needs 'names' or 'label_map'")
    try:
        return {int(value): str(name) for value, name in table.items()}
    except (AttributeError, ValueError):
        raise OncoSegError(f"{folder}: label names must map integer values to names") from None


def organ_table(atlas: Atlas | None) -> list[dict]:
    """One row per known organ: TG-263 name, description, colour, and how the current setup contours it."""
    from oncoseg.contour.adapt import HU_ORGANS
    from oncoseg.contour.bones import is_bone

    supported = set(atlas.organs()) if atlas is not None else set()
    rows = []
    for s in STRUCTURES:
        if s.name in HU_ORGANS and s.name not in supported:
            status = (
                "CT numbers"  # found from the patient's own HU (oncoseg.contour.anatomy), no atlas needed
            )
        elif s.name not in supported:
            status = "not in atlas"
        elif s.name in MODEL_REFINED:
            status = "atlas + model"
        elif is_bone(s.name):
            status = "atlas + bone CT numbers"
        else:
            status = "atlas only"
        rows.append(
            {
                "name": s.name,
                "description": s.description,
                "color": list(default_color(s.name)),
                "status": status,
            }
        )
    return rows

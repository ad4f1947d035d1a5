"""Organ-at-risk names after AAPM TG-263, with aliases (incl. TotalSegmentator's labels) and default colours.

`standard_name("kidney_left")` → ``"Kidney_L"``; unknown names come back cleaned up (trimmed, inner
whitespace → ``_``, at most 64 characters, the DICOM limit of an ROI name). `default_color(name)` is the table's
colour for known structures and a stable colour derived from the name otherwise. The table holds the common
thoracic, abdominal, pelvic and head-and-neck organs at risk, the vertebrae and the ribs; check it against your
clinic's own list.

Every name is a TG-263 primary name (AAPM Report 263, Mayo et al. 2018): tests/test_dicom_rtstruct.py checks the
whole table against the report's list of primary names, kept in tests/data/tg263_primary_names.csv with its
source. Older Onco-Seg names (``Aorta``, ``VenaCava_I``, ``Mandible``) still resolve as aliases.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Structure:
    name: str  # TG-263 primary name
    description: str
    color: tuple[int, int, int]
    aliases: tuple[str, ...] = ()


def _s(name: str, description: str, color: tuple[int, int, int], *aliases: str) -> Structure:
    return Structure(name, description, color, aliases)


STRUCTURES: tuple[Structure, ...] = (
    # thorax
    _s("Heart", "heart", (255, 0, 0), "heart", "cor"),
    _s("Lung_L", "left lung", (0, 160, 255), "lung_left", "left lung", "lung l", "lt lung"),
    _s("Lung_R", "right lung", (0, 110, 230), "lung_right", "right lung", "lung r", "rt lung"),
    _s("Lungs", "both lungs", (60, 140, 255), "lung", "lungs", "lung_total", "total lung"),
    _s("Lung_LUL", "left upper lobe", (100, 190, 255), "lung_upper_lobe_left"),
    _s("Lung_LLL", "left lower lobe", (70, 150, 220), "lung_lower_lobe_left"),
    _s("Lung_RUL", "right upper lobe", (90, 170, 250), "lung_upper_lobe_right"),
    _s("Lung_RML", "right middle lobe", (50, 130, 210), "lung_middle_lobe_right"),
    _s("Lung_RLL", "right lower lobe", (30, 100, 190), "lung_lower_lobe_right"),
    _s("Esophagus", "oesophagus", (255, 170, 90), "esophagus", "oesophagus"),
    _s("Trachea", "trachea", (140, 255, 255), "trachea"),
    _s("A_Aorta", "aorta", (220, 20, 60), "aorta"),
    _s("V_Venacava_S", "superior vena cava", (30, 60, 200), "superior_vena_cava", "svc", "venacava_s"),
    _s("V_Venacava_I", "inferior vena cava", (20, 40, 170), "inferior_vena_cava", "ivc", "venacava_i"),
    _s("V_Pulmonary", "pulmonary veins", (80, 80, 220), "pulmonary_vein", "pulmonary veins"),
    _s("A_Brachiocephls", "brachiocephalic trunk", (200, 40, 90), "brachiocephalic_trunk"),
    _s("A_Carotid_L", "left common carotid artery", (230, 60, 60), "common_carotid_artery_left"),
    _s("A_Carotid_R", "right common carotid artery", (210, 50, 50), "common_carotid_artery_right"),
    _s("A_Subclavian_L", "left subclavian artery", (240, 90, 90), "subclavian_artery_left"),
    _s("A_Subclavian_R", "right subclavian artery", (220, 80, 80), "subclavian_artery_right"),
    _s("BrachialPlex_L", "left brachial plexus", (255, 230, 0), "brachial_plexus_left"),
    _s("BrachialPlex_R", "right brachial plexus", (235, 210, 0), "brachial_plexus_right"),
    _s("Breast_L", "left breast", (255, 180, 200), "breast_left"),
    _s("Breast_R", "right breast", (235, 160, 180), "breast_right"),
    _s("SpinalCord", "spinal cord", (255, 255, 0), "spinal_cord", "spinal cord", "cord"),
    _s("SpinalCanal", "spinal canal", (230, 230, 60), "spinal_canal"),
    # abdomen
    _s("Liver", "liver", (150, 75, 0), "liver", "hepar"),
    _s("Kidney_L", "left kidney", (200, 130, 0), "kidney_left", "left kidney", "kidney l", "lt kidney"),
    _s("Kidney_R", "right kidney", (180, 110, 0), "kidney_right", "right kidney", "kidney r", "rt kidney"),
    _s("Stomach", "stomach", (255, 140, 180), "stomach"),
    _s("Spleen", "spleen", (160, 0, 160), "spleen", "lien"),
    _s("Pancreas", "pancreas", (255, 200, 120), "pancreas"),
    _s("Gallbladder", "gallbladder", (0, 200, 80), "gallbladder", "gall bladder"),
    _s("Duodenum", "duodenum", (255, 160, 110), "duodenum"),
    _s("Bowel_Small", "small bowel", (255, 190, 150), "small_bowel", "small bowel", "small intestine"),
    _s("Bowel_Large", "large bowel", (200, 120, 80), "large_bowel", "large bowel", "large intestine"),
    _s("Bowel", "bowel bag", (230, 170, 130), "bowel", "bowel bag", "bowel_bag"),
    _s("Colon", "colon", (210, 140, 90), "colon"),
    _s("Glnd_Adrenal_L", "left adrenal gland", (255, 100, 0), "adrenal_gland_left", "left adrenal"),
    _s("Glnd_Adrenal_R", "right adrenal gland", (235, 90, 0), "adrenal_gland_right", "right adrenal"),
    _s("V_Portal", "portal vein", (40, 90, 220), "portal_vein", "portal_vein_and_splenic_vein"),
    # pelvis
    _s("Bladder", "urinary bladder", (255, 255, 128), "urinary_bladder", "bladder"),
    _s("Rectum", "rectum", (139, 69, 19), "rectum"),
    _s("Prostate", "prostate", (0, 128, 255), "prostate"),
    _s("SeminalVes", "seminal vesicles", (100, 170, 255), "seminal_vesicles", "seminal vesicles"),
    _s("Uterus", "uterus", (255, 120, 200), "uterus"),
    _s("Femur_Head_L", "left femoral head", (180, 180, 255), "femoral_head_left", "left femoral head"),
    _s("Femur_Head_R", "right femoral head", (160, 160, 235), "femoral_head_right", "right femoral head"),
    _s("Femur_L", "left femur", (200, 200, 255), "femur_left", "left femur"),
    _s("Femur_R", "right femur", (180, 180, 235), "femur_right", "right femur"),
    _s("Sacrum", "sacrum", (230, 220, 190), "sacrum"),
    _s("A_Iliac_L", "left iliac artery", (250, 70, 70), "iliac_artery_left"),
    _s("A_Iliac_R", "right iliac artery", (230, 60, 60), "iliac_artery_right"),
    _s("V_Iliac_L", "left iliac vein", (70, 70, 250), "iliac_vena_left", "iliac_vein_left"),
    _s("V_Iliac_R", "right iliac vein", (60, 60, 230), "iliac_vena_right", "iliac_vein_right"),
    # head and neck
    _s("Brain", "brain", (255, 220, 180), "brain", "cerebrum"),
    _s("Brainstem", "brainstem", (255, 128, 0), "brainstem", "brain_stem", "brain stem"),
    _s("Parotid_L", "left parotid gland", (0, 255, 128), "parotid_gland_left", "left parotid", "parotid l"),
    _s(
        "Parotid_R", "right parotid gland", (0, 220, 110), "parotid_gland_right", "right parotid", "parotid r"
    ),
    _s("Glnd_Submand_L", "left submandibular gland", (0, 200, 200), "submandibular_gland_left"),
    _s("Glnd_Submand_R", "right submandibular gland", (0, 180, 180), "submandibular_gland_right"),
    _s("Glnd_Thyroid", "thyroid gland", (128, 0, 255), "thyroid_gland", "thyroid"),
    _s("Larynx", "larynx", (0, 255, 200), "larynx"),
    _s("Bone_Mandible", "mandible", (220, 220, 220), "mandible"),
    _s("Cavity_Oral", "oral cavity", (255, 150, 150), "oral_cavity", "oral cavity"),
    _s("Eye_L", "left eye", (0, 255, 0), "eye_left", "left eye", "globe_left"),
    _s("Eye_R", "right eye", (0, 230, 0), "eye_right", "right eye", "globe_right"),
    _s("Lens_L", "left lens", (255, 255, 200), "lens_left", "left lens"),
    _s("Lens_R", "right lens", (235, 235, 180), "lens_right", "right lens"),
    _s("OpticNrv_L", "left optic nerve", (255, 0, 255), "optic_nerve_left", "left optic nerve"),
    _s("OpticNrv_R", "right optic nerve", (230, 0, 230), "optic_nerve_right", "right optic nerve"),
    _s("OpticChiasm", "optic chiasm", (200, 0, 255), "optic_chiasm", "chiasm"),
    _s("Cochlea_L", "left cochlea", (255, 80, 160), "cochlea_left"),
    _s("Cochlea_R", "right cochlea", (235, 70, 140), "cochlea_right"),
    _s("Pituitary", "pituitary gland", (255, 60, 200), "pituitary_gland", "pituitary", "hypophysis"),
    _s("Humerus_L", "left humerus", (210, 210, 180), "humerus_left"),
    _s("Humerus_R", "right humerus", (190, 190, 160), "humerus_right"),
    # whole body
    _s("External", "body outline", (0, 255, 0), "body", "external", "skin", "body_outline"),
)

_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
             "eleventh", "twelfth")  # fmt: skip
_SPINE = (("C", "cervical", 7, "C{n}"), ("T", "thoracic", 12, "T{n:02d}"), ("L", "lumbar", 5, "L{n}"),
          ("S", "sacral", 1, "S{n}"))  # fmt: skip
# skeleton: vertebrae (TotalSegmentator's vertebrae_T12 → VB_T12) and ribs (rib_left_7 → Rib07_L), shades of
# bone colour that alternate level by level so that neighbours stand apart
STRUCTURES += tuple(
    _s(f"VB_{form.format(n=n)}", f"{region} vertebra {letter}{n}", (240 - 30 * (n % 2), 220 - 20 * (n % 3), 160),
       f"vertebrae_{letter}{n}", f"vertebra {letter}{n}")
    for letter, region, count, form in _SPINE
    for n in range(1, count + 1)
) + tuple(
    _s(f"Rib{n:02d}_{side[0].upper()}", f"{_ORDINALS[n - 1]} rib, {side}",
       (230 - 25 * (n % 2), 200 - 15 * (n % 3), 140 + (20 if side == "left" else 0)), f"rib_{side}_{n}")
    for n in range(1, 13)
    for side in ("left", "right")
) + (_s("Rib", "ribs (any rib volume)", (225, 195, 150), "ribs"),)  # fmt: skip

_MAX_ROI_NAME = 64  # DICOM LO


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


_BY_KEY: dict[str, Structure] = {}
for _structure in STRUCTURES:
    for _alias in (_structure.name, *_structure.aliases):
        _BY_KEY.setdefault(_key(_alias), _structure)


def lookup(name: str) -> Structure | None:
    """The table entry for a TG-263 name or alias (case, ``_``/``-``/space insensitive), else None."""
    return _BY_KEY.get(_key(name))


def standard_name(name: str) -> str:
    """The TG-263 name if ``name`` is known, else ``name`` cleaned up (whitespace → ``_``, ≤ 64 chars)."""
    entry = lookup(name)
    if entry is not None:
        return entry.name
    cleaned = re.sub(r"\s+", "_", "".join(ch for ch in name.strip() if ch.isprintable() and ch != "\\"))
    return cleaned[:_MAX_ROI_NAME] or "Structure"


def default_color(name: str) -> tuple[int, int, int]:
    """The table's RGB colour for a known structure, else a stable bright colour derived from the name."""
    entry = lookup(name)
    if entry is not None:
        return entry.color
    digest = hashlib.sha256(standard_name(name).encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536
    return _hsv_to_rgb(hue, 0.75, 0.95)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return round(r * 255), round(g * 255), round(b * 255)

"""Read the registered datasets in the layouts their users download, as lists of `Case`.

Where the data is: ``open_dataset(name, root)`` looks in ``root`` if given, else in the folder named by the
environment variable ``ONCOSEG_DATA``, else in ``shared/data`` beside the repository (see
`oncoseg.data.registry.data_root`; the current directory does not matter). Inside
that data root the first existing folder of `DatasetInfo.folders` is used (e.g. ``kvasir-seg/``); a root
that itself holds the dataset's layout (e.g. a downloaded ``Task04_Hippocampus/``) is used as it is.
A missing or incomplete dataset raises `OncoSegError` with one line: the dataset, what is missing, where.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from oncoseg.data.registry import BTCV_ORGANS, ENV_VAR, REGISTRY, DatasetInfo, data_root, get_info
from oncoseg.data.splits import _check_split_name, committed_split, split_case_ids
from oncoseg.errors import OncoSegError
from oncoseg.image import MedicalImage
from oncoseg.io import load_image

Region = tuple[str, tuple[int, ...]]


@dataclass(frozen=True)
class LabelSpec:
    """How label files become masks: each region is a target name and the label values it covers.

    With ``threshold`` set, the label files are binary masks (a pixel above it is foreground; several files
    are united) read as label 1. ``only_present`` leaves out regions none of whose labels occur.
    """

    regions: tuple[Region, ...]
    threshold: int | None = None
    only_present: bool = False


def binary(target: str, threshold: int = 0) -> LabelSpec:
    """One target from binary mask files (``threshold=127`` for 8-bit pictures such as JPEG masks)."""
    return LabelSpec(((target, (1,)),), threshold)


@dataclass(frozen=True)
class Case:
    """One labelled image: its files, patient, category and how to read its masks."""

    dataset: str
    case_id: str
    patient_id: str
    image_paths: tuple[Path, ...]
    label_paths: tuple[Path, ...]
    modality: str
    labels: LabelSpec
    category: str | None = None
    channel_names: tuple[str, ...] = ()

    def load(self) -> tuple[MedicalImage, dict[str, np.ndarray]]:
        """The image (several files: channels last, in ``channel_names`` order) and target → bool mask."""
        image = self._load_image()
        label = self._load_label(image)
        present = set(np.unique(label).tolist()) if self.labels.only_present else None
        return image, {
            name: np.isin(label, values)
            for name, values in self.labels.regions
            if present is None or present.intersection(values)
        }

    def _load_image(self) -> MedicalImage:
        images = [load_image(path, self.modality) for path in self.image_paths]
        image = images[0]
        for other, path in zip(images[1:], self.image_paths[1:], strict=True):
            if other.shape != image.shape:
                raise OncoSegError(
                    f"{self.dataset} case {self.case_id}: {path.name} has shape {other.shape} but "
                    f"{self.image_paths[0].name} has {image.shape}"
                )
        if len(images) > 1:
            image = image.with_array(np.stack([i.array for i in images], axis=-1), channels=len(images))
        elif image.channels == 3 and not image.is_3d and np.all(image.array == image.array[..., :1]):
            image = image.with_array(image.array[..., 0])  # greyscale stored as RGB
        if self.channel_names:
            image.metadata["channel_names"] = list(self.channel_names)
        return image

    def _load_label(self, image: MedicalImage) -> np.ndarray:
        arrays = []
        for path in self.label_paths:
            label = load_image(path, self.modality)
            self._check_geometry(label, image, path)
            arrays.append(label.array.mean(axis=-1) if label.channels > 1 else label.array)
        if self.labels.threshold is not None:
            return np.logical_or.reduce([a > self.labels.threshold for a in arrays]).astype(np.uint8)
        (array,) = arrays
        return np.rint(array).astype(np.int32) if array.dtype.kind == "f" else array

    def _check_geometry(self, label: MedicalImage, image: MedicalImage, path: Path) -> None:
        problem = None
        if label.shape != image.shape:
            problem = f"shape {label.shape} but the image has {image.shape}"
        elif image.is_3d and not np.allclose(label.spacing, image.spacing, rtol=1e-3):
            problem = f"spacing {label.spacing} but the image has {image.spacing}"
        elif image.is_3d and not np.allclose(label.origin, image.origin, atol=0.5 * min(image.spacing)):
            problem = f"origin {label.origin} but the image has {image.origin}"
        if problem:
            raise OncoSegError(f"{self.dataset} case {self.case_id}: label {path.name} has {problem}")


class Dataset:
    """The cases of one dataset found in ``folder``."""

    def __init__(self, info: DatasetInfo, folder: Path, cases: list[Case]) -> None:
        self.info = info
        self.folder = folder
        self._cases = cases

    def __len__(self) -> int:
        return len(self._cases)

    def __repr__(self) -> str:
        return f"Dataset({self.info.name!r}, {len(self)} cases in {self.folder})"

    def cases(self, split: str | None = None) -> list[Case]:
        """All cases, or those of the fixed "train", "val" or "test" split (see `oncoseg.data.splits`)."""
        if split is None:
            return list(self._cases)
        wanted = set(split_case_ids(self, split))
        return [case for case in self._cases if case.case_id in wanted]

    def case(self, case_id: str) -> Case:
        for case in self._cases:
            if case.case_id == case_id:
                return case
        raise OncoSegError(f"{self.info.name}: no case {case_id!r} in {self.folder}")


class _Missing(Exception):
    """What a layout lacks (turned into a one-line `OncoSegError` by `open_dataset`)."""


class Layout(Protocol):
    def matches(self, folder: Path) -> bool:
        """Whether ``folder`` looks like this layout."""

    def find(self, info: DatasetInfo, folder: Path) -> list[Case]:
        """The cases in ``folder``; raises `_Missing` naming what is absent."""


def _stem(path: Path) -> str:
    return path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem


def _same(case_id: str) -> str:
    return case_id


def _no_category(path: Path) -> str | None:
    return None


def _existing(*paths: Path) -> list[Path]:
    return [p for p in paths if p.exists()]


def _sibling(folder: str) -> Callable[[Path], list[Path]]:
    """Label = the file of the same name in a sibling folder (``images/x.jpg`` → ``masks/x.jpg``)."""
    return lambda image: _existing(image.parent.parent / folder / image.name)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class PairedFiles:
    """Images (files or DICOM folders) matching the ``images`` globs, each with ``labels_of(image)``."""

    images: tuple[str, ...]
    labels_of: Callable[[Path], list[Path]]
    labels: LabelSpec
    required: tuple[str, ...] = ()
    case_id_of: Callable[[Path], str] = _stem
    patient_of: Callable[[str], str] = _same
    category_of: Callable[[Path], str | None] = _no_category

    def matches(self, folder: Path) -> bool:
        return any(next(folder.glob(pattern), None) for pattern in self.images)

    def find(self, info: DatasetInfo, folder: Path) -> list[Case]:
        for sub in self.required:
            if not (folder / sub).is_dir():
                raise _Missing(f"no {sub}/ folder")
        images = sorted({p for g in self.images for p in folder.glob(g) if not p.name.startswith(".")})
        if not images:
            raise _Missing(f"no {' or '.join(self.images)}")
        cases, unlabelled = [], []
        for image in images:
            labels = self.labels_of(image)
            if not labels:
                unlabelled.append(image)
                continue
            case_id = self.case_id_of(image)
            cases.append(
                Case(
                    info.name,
                    case_id,
                    self.patient_of(case_id),
                    (image,),
                    tuple(labels),
                    info.modality,
                    self.labels,
                    self.category_of(image),
                )
            )
        if unlabelled:
            first = unlabelled[0].relative_to(folder)
            raise _Missing(f"no label file for {len(unlabelled)} of {len(images)} images (first: {first})")
        return cases


@dataclass(frozen=True)
class Decathlon:
    """Medical Segmentation Decathlon / nnU-Net v2: ``dataset.json``, ``imagesTr/``, ``labelsTr/``.

    Without ``regions``, each label of dataset.json is a target, plus ``"whole"`` (their union) when there
    are several. nnU-Net v2 images are ``<case>_<channel:04d><file_ending>``, one file per channel.
    """

    regions: tuple[Region, ...] | None = None
    patient_of: Callable[[str], str] = _same

    def matches(self, folder: Path) -> bool:
        return (folder / "dataset.json").is_file()

    def find(self, info: DatasetInfo, folder: Path) -> list[Case]:
        for sub in ("dataset.json", "imagesTr/", "labelsTr/"):
            if not (folder / sub).exists():
                raise _Missing(f"no {sub}")
        try:
            meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
            labels = LabelSpec(self.regions or _regions_from(meta["labels"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise _Missing(f"no readable 'labels' in dataset.json ({exc})") from None
        channel_names: tuple[str, ...] = ()
        if meta.get("training"):
            pairs = [((folder / e["image"],), folder / e["label"]) for e in meta["training"]]
        else:
            ending = meta.get("file_ending", ".nii.gz")
            channels = meta.get("channel_names", {"0": ""})
            channel_names = tuple(channels[k] for k in sorted(channels, key=int))
            pairs = [
                (
                    tuple(
                        folder / "imagesTr" / f"{label.name[: -len(ending)]}_{c:04d}{ending}"
                        for c in range(len(channels))
                    ),
                    label,
                )
                for label in sorted((folder / "labelsTr").glob(f"*{ending}"))
                if not label.name.startswith(".")
            ]
        if not pairs:
            raise _Missing("no cases in labelsTr/")
        missing = [p for images, label in pairs for p in (*images, label) if not p.is_file()]
        if missing:
            first = missing[0].relative_to(folder)
            raise _Missing(f"{len(missing)} image/label files missing (first: {first})")
        return [
            Case(
                info.name,
                _stem(label),
                self.patient_of(_stem(label)),
                images,
                (label,),
                info.modality,
                labels,
                channel_names=channel_names,
            )
            for images, label in pairs
        ]


def _regions_from(labels: dict[str, Any]) -> tuple[Region, ...]:
    """Targets from dataset.json "labels": MSD ``{"1": "Anterior"}`` or nnU-Net v2 ``{"tumor": 1}``."""
    if all(key.isdigit() for key in labels):
        regions = [(name, (int(key),)) for key, name in labels.items() if int(key) != 0]
    else:
        regions = [
            (name, tuple(np.atleast_1d(value).astype(int).tolist()))
            for name, value in labels.items()
            if name != "background"
        ]
    if len(regions) > 1 and all(len(values) == 1 for _, values in regions):
        regions.append(("whole", tuple(v for _, values in regions for v in values)))
    return tuple(regions)


@dataclass(frozen=True)
class BratsFolders:
    """One folder per case; ``images`` and ``label`` are file names with ``{case}`` for the folder name."""

    images: tuple[str, ...]
    label: str
    channel_names: tuple[str, ...]
    regions: tuple[Region, ...]
    patient_of: Callable[[str], str] = _same

    def matches(self, folder: Path) -> bool:
        return any((d / self.label.format(case=d.name)).is_file() for d in _subdirs(folder))

    def find(self, info: DatasetInfo, folder: Path) -> list[Case]:
        dirs = _subdirs(folder)
        if not dirs:
            raise _Missing("no case folders")
        cases, incomplete = [], []
        for d in dirs:
            files = [d / name.format(case=d.name) for name in (*self.images, self.label)]
            missing = [f for f in files if not f.is_file()]
            if missing:
                incomplete.append(missing[0].relative_to(folder))
                continue
            cases.append(
                Case(
                    info.name,
                    d.name,
                    self.patient_of(d.name),
                    tuple(files[:-1]),
                    (files[-1],),
                    info.modality,
                    LabelSpec(self.regions),
                    channel_names=self.channel_names,
                )
            )
        if incomplete:
            raise _Missing(
                f"{len(incomplete)} of {len(dirs)} case folders incomplete (first missing: {incomplete[0]})"
            )
        return cases


@dataclass(frozen=True)
class TotalSegmentatorExample:
    """TotalSegmentator's test files: each image with its label map; targets are the organs present."""

    label_map: str = "label_map_total_and_total_mr.json"
    # case id, image, labels, task in the label map, modality
    pairs: tuple[tuple[str, str, str, str, str], ...] = (
        ("ct", "example_ct_sm.nii.gz", "example_seg.nii.gz", "total", "ct"),
        ("ct_dicom", "example_ct_dicom", "example_seg_dicom.nii.gz", "total", "ct"),
        ("mr", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "total_mr", "mri"),
    )

    def matches(self, folder: Path) -> bool:
        return (folder / self.label_map).is_file()

    def find(self, info: DatasetInfo, folder: Path) -> list[Case]:
        if not self.matches(folder):
            raise _Missing(f"no {self.label_map}")
        tasks = json.loads((folder / self.label_map).read_text(encoding="utf-8"))
        cases = []
        for case_id, image, label, task, modality in self.pairs:
            if not (folder / image).exists():
                continue
            if not (folder / label).is_file():
                raise _Missing(f"no {label} for {image}")
            regions = tuple((name, (int(value),)) for value, name in tasks[task].items())
            cases.append(
                Case(
                    info.name,
                    case_id,
                    "example",
                    (folder / image,),
                    (folder / label,),
                    modality,
                    LabelSpec(regions, only_present=True),
                )
            )
        if not cases:
            raise _Missing(f"no {self.pairs[0][1]}")
        return cases


def _busi_masks(image: Path) -> list[Path]:
    return sorted(image.parent.glob(f"{glob.escape(image.stem)}_mask*.png"))


def _lndb_masks(image: Path) -> list[Path]:
    """The first radiologist's mask (``masks/LNDb-0001_rad1.mhd``) beside the image or its data folder."""
    pattern = f"masks/{image.stem}_rad*.mhd"
    return sorted([*image.parent.glob(pattern), *image.parent.parent.glob(pattern)])[:1]


BUSI = ("benign", "malignant", "normal")
LIVER_TUMOUR = (("liver", (1, 2)), ("tumour", (2,)))
PANCREAS_TUMOUR = (("pancreas", (1, 2)), ("tumour", (2,)))
ISIC_TRUTH = "ISIC2018_Task1_Training_GroundTruth"
KVASIR = PairedFiles(("images/*.jpg",), _sibling("masks"), binary("polyp", 127), required=("images", "masks"))

LAYOUTS: dict[str, tuple[Layout, ...]] = {
    "kvasir-seg": (KVASIR,),
    "hyper-kvasir": (KVASIR,),
    "busi": (
        PairedFiles(
            tuple(f"{c}/{c} (*).png" for c in BUSI),
            _busi_masks,
            binary("lesion", 127),
            required=BUSI,
            category_of=lambda image: image.parent.name,
        ),
    ),
    "isic2018": (
        PairedFiles(
            ("ISIC2018_Task1-2_Training_Input/ISIC_*.jpg",),
            lambda p: _existing(p.parent.parent / ISIC_TRUTH / f"{p.stem}_segmentation.png"),
            binary("lesion", 127),
            required=("ISIC2018_Task1-2_Training_Input", ISIC_TRUTH),
        ),
    ),
    "cvc-clinicdb": (
        PairedFiles(
            ("Original/*.tif", "Original/*.png"),
            _sibling("Ground Truth"),
            binary("polyp", 127),
            required=("Original", "Ground Truth"),
        ),
    ),
    "lits": (
        Decathlon(LIVER_TUMOUR),
        PairedFiles(
            ("volume-*.nii", "volume-*.nii.gz", "*/volume-*.nii", "*/volume-*.nii.gz"),
            lambda p: _existing(p.with_name(p.name.replace("volume-", "segmentation-"))),
            LabelSpec(LIVER_TUMOUR),
        ),
    ),
    "ircadb": (
        PairedFiles(
            ("3Dircadb1.*/PATIENT_DICOM",),
            lambda p: _existing(p.parent / "MASKS_DICOM" / "liver"),
            binary("liver"),
            case_id_of=lambda p: p.parent.name,
        ),
    ),
    "promise12": (
        PairedFiles(
            ("Case[0-9][0-9].mhd", "*/Case[0-9][0-9].mhd"),
            lambda p: _existing(p.with_name(f"{p.stem}_segmentation.mhd")),
            binary("prostate"),
        ),
    ),
    "msd-colon": (Decathlon((("tumour", (1,)),)),),
    "btcv": (
        PairedFiles(
            ("img/img*.nii.gz", "RawData/Training/img/img*.nii.gz"),
            lambda p: _existing(p.parent.parent / "label" / p.name.replace("img", "label", 1)),
            LabelSpec(tuple((organ, (i,)) for i, organ in enumerate(BTCV_ORGANS, start=1))),
        ),
    ),
    "lndb": (
        PairedFiles(
            ("LNDb-[0-9][0-9][0-9][0-9].mhd", "data*/LNDb-[0-9][0-9][0-9][0-9].mhd"),
            _lndb_masks,
            binary("nodule"),
        ),
    ),
    "msd-pancreas": (Decathlon(PANCREAS_TUMOUR),),
    "autopet": (Decathlon((("lesion", (1,)),), patient_of=lambda case_id: "_".join(case_id.split("_")[:2])),),
    "msd-hippocampus": (Decathlon(),),
    "brats2015": (
        BratsFolders(
            ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"),
            "OTMultiClass.nii.gz",
            ("FLAIR", "T1c"),
            (("WT", (1, 2, 3, 4)), ("TC", (1, 3, 4)), ("ET", (4,))),
            patient_of=lambda case_id: case_id.rsplit("_", 1)[0],  # brats_tcia_pat222_0122: patient, scan
        ),
    ),
    "brats2021": (
        BratsFolders(
            tuple(f"{{case}}_{s}.nii.gz" for s in ("flair", "t1", "t1ce", "t2")),
            "{case}_seg.nii.gz",
            ("FLAIR", "T1w", "T1gd", "T2w"),
            (("WT", (1, 2, 4)), ("TC", (1, 4)), ("ET", (4,))),
        ),
    ),
    "ircadb-liver-slices": (
        PairedFiles(
            ("images/*.png",),
            _sibling("masks"),
            binary("liver", 127),
            required=("images", "masks"),
            patient_of=lambda case_id: case_id.split("_")[0],  # "10001_60": patient 10001, slice 60
        ),
    ),
    "totalsegmentator-example": (TotalSegmentatorExample(),),
}


def open_dataset(name: str, root: str | os.PathLike | None = None) -> Dataset:
    """Dataset ``name`` (see `REGISTRY`) under the data root; `OncoSegError` if missing or incomplete."""
    info = get_info(name)
    layouts = LAYOUTS[info.name]
    base = data_root(root)
    if not base.is_dir():
        raise _error(info, f"data root {base} does not exist (pass root or set {ENV_VAR})")
    folder = next((base / f for f in info.folders if (base / f).is_dir()), None)
    if folder is None:
        if not any(layout.matches(base) for layout in layouts):
            raise _error(info, f"no {info.folder}/ folder in {base}")
        folder = base
    layout = next((layout for layout in layouts if layout.matches(folder)), layouts[0])
    try:
        cases = layout.find(info, folder)
    except _Missing as exc:
        raise _error(info, f"{exc} in {folder}") from None
    ids = [case.case_id for case in cases]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise _error(info, f"case id {duplicate!r} occurs twice in {folder}")
    return Dataset(info, folder, cases)


def _error(info: DatasetInfo, problem: str) -> OncoSegError:
    return OncoSegError(f"{info.name}: {problem}; expected {info.expected}; get it from {info.url}")


def datasets_table(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per registered dataset: what it is, whether it is found under the data root, and where."""
    base = data_root(root)
    rows = []
    for info in REGISTRY.values():
        row = {
            "name": info.name,
            "title": info.title,
            "modality": info.modality,
            "target": info.target,
            "dim": info.dim,
            "found": False,
            "path": str(base / info.folder),
            "n_cases": None,
            "paper_dice": info.paper_dice,
            "expected": info.expected,
            "citation": info.citation,
            "licence": info.licence,
            "url": info.url,
            "problem": None,
        }
        try:
            dataset = open_dataset(info.name, base)
        except OncoSegError as exc:
            row["problem"] = str(exc)
        else:
            row.update(found=True, path=str(dataset.folder), n_cases=len(dataset))
        rows.append(row)
    return rows


def format_datasets_table(rows: list[dict[str, Any]]) -> str:
    """`datasets_table` rows as a plain-text table, followed by what is missing for datasets not found."""
    header = ("name", "modality", "dim", "target", "cases", "paper Dice", "path")
    lines = [header] + [
        (
            r["name"],
            r["modality"],
            r["dim"],
            r["target"],
            str(r["n_cases"]) if r["found"] else "missing",
            "-" if r["paper_dice"] is None else f"{r['paper_dice']:.3f}",
            r["path"],
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in lines
    ]
    missing = [r for r in rows if not r["found"]]
    if missing:
        text += ["", "Not found:"] + [f"  {r['problem']}" for r in missing]
    return "\n".join(text)


def get_split(name: str, split: str, root: str | Path | None = None) -> list[str]:
    """Case ids of a dataset's ``"train"``, ``"val"`` or ``"test"`` split.

    Reads the committed split; a dataset without one is opened under ``root`` (see `open_dataset`) and
    split by the rule.
    """
    _check_split_name(split)
    document = committed_split(name)
    if document is not None:
        return document[split]
    return split_case_ids(open_dataset(name, root), split)

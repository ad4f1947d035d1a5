"""nnU-Net v2 engine: a trained nnU-Net model folder (your own, or TotalSegmentator's) contours a CT.

from oncoseg.contour import contour

model = ".../Dataset291_.../nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
result = contour("ct_dicom_folder/", engine="nnunet", model=model)  # `contour` wraps `contour_nnunet`
result.save("oars.dcm", output_type="rtstruct")  # the same `ContourResult` as the atlas engine

Inference is nnU-Net's own (`nnUNetPredictor`: its preprocessing, sliding window and resampling back) on the CPU.
Label names go to TG-263 through `oncoseg.dicom.tg263.lookup` (TotalSegmentator's ``liver``, ``kidney_left``…)
or a label map; labels that map to no name are reported, never drawn under an invented name. nnU-Net does not
reorient images: a model sees arrays in the order of its training files. ``orientation`` says which way the
array axes x, y, z pointed there (default ``RAS``: closest-canonical NIfTI, as TotalSegmentator feeds its models).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import numpy as np

from oncoseg.contour.evidence import REVIEW_BELOW, OrganEvidence
from oncoseg.dicom.tg263 import lookup, standard_name
from oncoseg.errors import ModelError, OncoSegError, ShapeError
from oncoseg.image import MedicalImage
from oncoseg.quality import Quality

INSTALL_HINT = "pip install 'oncoseg[nnunet]'"
CHECKPOINT = "checkpoint_final.pth"
DEFAULT_ORIENTATION = "RAS"
METHOD = "nnU-Net"
NONE_FOUND = "the nnU-Net model found none of it in this CT"
NO_LABEL = "no label of the nnU-Net model(s) maps to it"
_FOLDER_NAME = re.compile(r"^(?P<trainer>[^_].*?)__(?P<plans>.+?)__(?P<configuration>[^_].*)$")
_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}


# TotalSegmentator's bone and vein classes that have a TG-263 primary name but no organ-table entry
# (`oncoseg.dicom.tg263` holds organs at risk, vertebrae and ribs): tried after the table. Its muscles, sternum,
# costal cartilages, kidney cysts and left atrial appendage have no TG-263 primary name and stay unmapped.
TOTALSEGMENTATOR_NAMES: dict[str, str] = {
    **{f"{part}_{side}": f"{name}_{side[0].upper()}" for side in ("left", "right") for part, name in (
        ("scapula", "Scapula"), ("clavicula", "Clavicle"), ("hip", "Bone_Pelvic"),
        ("brachiocephalic_vein", "V_Brachioceph"),
    )},
    "skull": "Skull",
}  # fmt: skip


@dataclass
class NnUNetModel:
    """A trained nnU-Net v2 model folder, checked without loading its weights."""

    folder: Path
    dataset: str
    configuration: str | None
    trainer: str | None
    folds: list[int | str]
    checkpoint: str
    labels: dict[int, str]  # label value → the model's own label name (background and ignore left out)
    channel: str
    reader: str

    def describe(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "dataset": self.dataset,
            "configuration": self.configuration,
            "trainer": self.trainer,
            "folds": self.folds,
            "checkpoint": self.checkpoint,
            "input_channel": self.channel,
            "image_reader_writer": self.reader,
            "labels": {str(v): n for v, n in self.labels.items()},
        }


@dataclass
class NnUNetContours:
    """What the engine found; `oncoseg.contour.pipeline.contour` returns it as a `ContourResult`."""

    image: MedicalImage
    masks: dict[str, np.ndarray]
    methods: dict[str, str]
    timings: dict[str, float]
    model: str
    info: dict[str, Any]
    evidence: dict[str, OrganEvidence]


@dataclass
class LabelMapping:
    """Which model label becomes which TG-263 structure."""

    # value → TG-263 (or label-map) name; value → label name with no structure name; value → label name the
    # label map set to null
    names: dict[int, str] = field(default_factory=dict)
    unmapped: dict[int, str] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)


def require_nnunet() -> None:
    """Raise a one-line `ModelError` if nnunetv2 is not installed."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise ModelError(
            f"the nnU-Net engine needs nnunetv2, which is not installed: {INSTALL_HINT}"
        ) from None


def open_model(
    path: str | Path, folds: Sequence[int | str] | None = None, checkpoint: str = CHECKPOINT
) -> NnUNetModel:
    """Check an nnU-Net v2 model folder (``dataset.json``, ``plans.json``, ``fold_N/<checkpoint>``).

    ``path`` may also be the dataset folder above it when that holds exactly one trained model. ``folds``:
    default every ``fold_N`` with the checkpoint (as nnU-Net does), else ``fold_all``.
    """
    folder = _model_folder(Path(path))
    dataset_json = _read_json(folder / "dataset.json")
    plans = _read_json(folder / "plans.json")
    name = f"{folder.name}: " if folder.name else ""
    raw_labels = dataset_json.get("labels")
    if not isinstance(raw_labels, dict) or not isinstance(plans.get("configurations"), dict):
        raise ModelError(
            f"{name}dataset.json has no 'labels' or plans.json no 'configurations': not nnU-Net v2"
        )
    if any(isinstance(v, (list, tuple)) for v in raw_labels.values()):
        raise ModelError(f"{name}region-based nnU-Net models (labels given as lists) are not supported")
    try:
        labels = {
            int(v): str(k) for k, v in raw_labels.items() if k not in ("background", "ignore") and int(v)
        }
    except (TypeError, ValueError) as error:
        raise ModelError(f"{name}dataset.json labels must be integers ({error})") from None
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if len(channels) != 1:
        described = ", ".join(str(c) for c in channels.values()) or "none"
        raise ModelError(
            f"{name}the model takes {len(channels)} input channels ({described}); this engine gives it one CT"
        )
    parsed = _FOLDER_NAME.match(folder.name)
    configuration = parsed["configuration"] if parsed else None
    if configuration in plans["configurations"]:
        settings = plans["configurations"][configuration]
        if settings.get("previous_stage"):
            raise ModelError(f"{name}cascade models ({configuration}) need a previous stage: not supported")
    return NnUNetModel(
        folder=folder,
        dataset=str(plans.get("dataset_name") or folder.parent.name),
        configuration=configuration,
        trainer=parsed["trainer"] if parsed else None,
        folds=_folds(folder, folds, checkpoint),
        checkpoint=checkpoint,
        labels=dict(sorted(labels.items())),
        channel=str(next(iter(channels.values()))),
        reader=str(plans.get("image_reader_writer", "")),
    )


def _model_folder(path: Path) -> Path:
    if not path.exists():
        raise ModelError(f"nnU-Net model folder {path} does not exist")
    if not path.is_dir():
        raise ModelError(f"{path.name} is a file: --model takes the nnU-Net model folder, not a checkpoint")
    if (path / "dataset.json").is_file() and (path / "plans.json").is_file():
        return path
    inner = sorted(p for p in path.iterdir() if p.is_dir() and (p / "plans.json").is_file())
    if len(inner) == 1 and (inner[0] / "dataset.json").is_file():
        return inner[0]
    if len(inner) > 1:
        raise ModelError(
            f"{path.name} holds several trained models ({', '.join(p.name for p in inner)}): give one of them"
        )
    raise ModelError(
        f"{path.name} is not an nnU-Net v2 model folder (it needs dataset.json, plans.json and fold_N/): "
        "give the folder named like nnUNetTrainer__nnUNetPlans__3d_fullres"
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"{path.parent.name}: {path.name} is missing: not an nnU-Net v2 model folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path.parent.name}/{path.name} cannot be read ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path.parent.name}/{path.name} is not a JSON object")
    return data


def _folds(folder: Path, folds: Sequence[int | str] | None, checkpoint: str) -> list[int | str]:
    present = sorted(
        (p.name[len("fold_") :] for p in folder.glob("fold_*") if (p / checkpoint).is_file()),
        key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0),
    )
    if folds is None:
        chosen = [f for f in present if f != "all"] or [f for f in present if f == "all"]
        if not chosen:
            raise ModelError(f"{folder.name}: no fold_N/{checkpoint} found (the trained weights are missing)")
    else:
        chosen = [str(f) for f in folds]
        missing = [f for f in chosen if f not in present]
        if missing:
            found = ", ".join(f"fold_{f}" for f in present) or "none"
            raise ModelError(
                f"{folder.name}: fold_{missing[0]}/{checkpoint} is missing (folds with it: {found})"
            )
    return [int(f) if f.isdigit() else f for f in chosen]


def read_label_map(path: str | Path) -> dict[str, str | None]:
    """A label-map JSON file: ``{"5": "Liver", "kidney_left": "Kidney_L", "vertebrae_L1": null}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OncoSegError(f"label map {path.name}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OncoSegError(f"label map {path.name} is not valid JSON ({type(error).__name__})") from None
    if not isinstance(data, dict) or not all(isinstance(v, (str, type(None))) for v in data.values()):
        raise OncoSegError(
            f"label map {path.name} must be a JSON object of label value or name → name or null"
        )
    return {str(k): v for k, v in data.items()}


def map_labels(labels: dict[int, str], label_map: dict[str, str | None] | None = None) -> LabelMapping:
    """TG-263 names for a model's labels: the label map's entry (by value, then by label name), else the
    table's name for the label name (`oncoseg.dicom.tg263.lookup`), else `TOTALSEGMENTATOR_NAMES`; a null
    entry skips the label."""
    label_map = label_map or {}
    mapping = LabelMapping()
    for value, label in labels.items():
        key = str(value) if str(value) in label_map else label if label in label_map else None
        if key is not None:
            target = label_map[key]
            if target is None or not target.strip():
                mapping.skipped[value] = label
            else:
                mapping.names[value] = standard_name(target)
        elif (entry := lookup(label)) is not None:
            mapping.names[value] = entry.name
        elif label in TOTALSEGMENTATOR_NAMES:
            mapping.names[value] = TOTALSEGMENTATOR_NAMES[label]
        else:
            mapping.unmapped[value] = label
    return mapping


def label_table(
    models: str | Path | Sequence[str | Path],
    label_map: dict[str, str | None] | str | Path | None = None,
) -> list[dict[str, Any]]:
    """One row per label of the model folder(s): value, the model's name, the structure name it becomes (or
    None) and how (``TG-263 table``, ``TotalSegmentator name``, ``label map``, ``unmapped``, ``skipped by label
    map``); no weights loaded."""
    paths = [models] if isinstance(models, (str, Path)) else list(models)
    opened = [open_model(p) for p in paths]
    if isinstance(label_map, (str, Path)):
        label_map = read_label_map(label_map)
    check_label_map(label_map, opened)
    rows = []
    for model in opened:
        mapping = map_labels(model.labels, label_map)
        for value, label in model.labels.items():
            mapped = str(value) in (label_map or {}) or label in (label_map or {})
            if value in mapping.names:
                status = (
                    "label map" if mapped else "TG-263 table" if lookup(label) else "TotalSegmentator name"
                )
            else:
                status = "skipped by label map" if value in mapping.skipped else "unmapped"
            row = {"model": model.dataset, "value": value, "label": label, "name": mapping.names.get(value)}
            rows.append({**row, "status": status})
    return rows


def check_label_map(label_map: dict[str, str | None] | None, models: Sequence[NnUNetModel]) -> None:
    """Refuse label-map keys that name no label of the models (a typo would silently do nothing)."""
    if not label_map:
        return
    values = {str(v) for m in models for v in m.labels}
    names = {n for m in models for n in m.labels.values()}
    if len(models) > 1 and any(k.isdigit() and k not in names for k in label_map):
        raise OncoSegError("with several nnU-Net models, label-map keys must be label names, not values")
    unknown = sorted(k for k in label_map if k not in values and k not in names)
    if unknown:
        raise OncoSegError(f"label map names {unknown[0]!r}, which is no label of the model(s)")


def check_orientation(code: str) -> str:
    """``RAS``, ``LPS``, ``LAS``…: where the model's array axes x, y, z pointed (one letter each)."""
    code = str(code).strip().upper()
    if len(code) != 3 or code[0] not in "LR" or code[1] not in "PA" or code[2] not in "SI":
        raise OncoSegError(f"orientation {code!r}: give 3 letters for x, y, z, e.g. RAS or LPS")
    return code


def _flips(code: str) -> tuple[slice, ...]:
    """Index flipping an LPS-ordered ``[z, y, x]`` array into ``code``'s directions (its own inverse)."""
    lps = "LPS"
    step = [-1 if code[i] == _OPPOSITE[lps[i]] else 1 for i in range(3)]  # x, y, z
    return (slice(None, None, step[2]), slice(None, None, step[1]), slice(None, None, step[0]))


def prepare(
    models: str | Path | Sequence[str | Path],
    organs: Sequence[str] | None = None,
    label_map: dict[str, str | None] | str | Path | None = None,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = CHECKPOINT,
) -> tuple[list[NnUNetModel], dict[str, str | None] | None, list[str] | None]:
    """Check everything but the image before any work: nnunetv2 installed, the model folders, the label map
    and the organ names. Returns (models, label map, organs wanted or None for all)."""
    require_nnunet()
    paths = [models] if isinstance(models, (str, Path)) else list(models)
    if not paths:
        raise ModelError("give at least one nnU-Net model folder")
    opened = [open_model(p, folds, checkpoint) for p in paths]
    if isinstance(label_map, (str, Path)):
        label_map = read_label_map(label_map)
    check_label_map(label_map, opened)
    return opened, label_map, _wanted(organs, [map_labels(m.labels, label_map) for m in opened])


def contour_nnunet(
    image: str | Path | MedicalImage,
    models: str | Path | Sequence[str | Path],
    organs: Sequence[str] | None = None,
    *,
    label_map: dict[str, str | None] | str | Path | None = None,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = CHECKPOINT,
    orientation: str = DEFAULT_ORIENTATION,
    mirroring: bool = True,
    step_size: float = 0.5,
    threads: int = 1,
    progress: bool = False,
):
    """Contour a CT (file or DICOM series folder) with one or more nnU-Net v2 model folders.

    ``organs``: TG-263 names or aliases to keep (default: every label that has a name). ``label_map``: a dict
    or JSON file, label value or name → structure name (null skips it). ``mirroring``: nnU-Net's test-time
    mirroring where the model allows it. Returns `NnUNetContours` (``contour(engine="nnunet")`` makes it a
    `ContourResult`): ``evidence`` gives each drawn organ's
    confidence (the mean softmax probability of its voxels on the network's grid; review below `REVIEW_BELOW`)
    and the reason for every organ asked for and not drawn (``omitted``); ``info["unmapped_labels"]`` lists the
    labels with no name and the volume the model found.
    """
    from oncoseg.io import load_image

    timings: dict[str, float] = {}
    start = time.perf_counter()
    orientation = check_orientation(orientation)
    opened, label_map, wanted = prepare(models, organs, label_map, folds, checkpoint)
    if not isinstance(image, MedicalImage):
        image = load_image(image)
    if not image.is_3d or image.channels != 1:
        raise ShapeError(f"the nnU-Net engine needs a single-channel 3D CT; got shape {image.array.shape}")
    if image.modality not in (None, "ct"):
        raise OncoSegError(f"the nnU-Net engine contours CT, but this image looks like {image.modality}")
    timings["load"] = time.perf_counter() - start

    masks: dict[str, np.ndarray] = {}
    sources: dict[str, list[str]] = {}
    unmapped: dict[str, float] = {}
    votes: dict[str, list[tuple[float, int]]] = {}
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    flips = _flips(orientation)
    array = np.ascontiguousarray(image.array[flips], dtype=np.float32)[None]
    for index, model in enumerate(opened):
        t = time.perf_counter()
        segmentation, scores = _predict(
            model, array, image.spacing_zyx, mirroring, step_size, threads, progress
        )
        segmentation = segmentation[flips]
        timings[f"nnunet_{index}" if len(opened) > 1 else "nnunet"] = time.perf_counter() - t
        mapping = map_labels(model.labels, label_map)
        for value, label in mapping.unmapped.items():
            unmapped[label] = round(
                unmapped.get(label, 0.0) + float((segmentation == value).sum()) * voxel_ml, 2
            )
        for value, name in mapping.names.items():
            if wanted is not None and name not in wanted:
                continue
            mask = segmentation == value
            masks[name] = masks[name] | mask if name in masks else mask
            sources.setdefault(name, []).append(f"{model.dataset}:{model.labels[value]}")
            if value in scores:
                votes.setdefault(name, []).append(scores[value])

    evidence: dict[str, OrganEvidence] = {}
    for name in list(masks):
        if not masks[name].any():
            del masks[name]
            evidence[name] = OrganEvidence(0.0, 0.0, None, omitted=NONE_FOUND, method=METHOD)
        else:
            volume = float(masks[name].sum()) * voxel_ml
            won = votes.get(name, [])
            score = sum(p * c for p, c in won) / sum(c for _, c in won) if won else None
            evidence[name] = _evidence(volume, score)
    for name in wanted or ():
        if name not in evidence:
            evidence[name] = OrganEvidence(0.0, 0.0, None, omitted=NO_LABEL, method=METHOD)
    timings["total"] = time.perf_counter() - start
    info = {
        "engine": "nnunet",
        "nnunet": {
            "models": [m.describe() for m in opened],
            "orientation": orientation,
            "mirroring": mirroring,
            "step_size": step_size,
        },
        "label_sources": sources,
        "unmapped_labels": unmapped,
    }
    described = ", ".join(
        f"{m.dataset}/{m.folder.name} (folds {', '.join(map(str, m.folds))})" for m in opened
    )
    methods = {name: METHOD for name in masks}
    model = f"nnU-Net v2: {described}"
    return NnUNetContours(image, masks, methods, timings, model, info, evidence)


def _evidence(volume_ml: float, score: float | None) -> OrganEvidence:
    """A drawn organ's evidence: its confidence is the network's mean softmax probability over the organ (None:
    the class won no voxel on the network's grid and appears only after resampling back: flagged)."""
    if score is None:
        confidence = Quality(0.0, True, ("only where nnU-Net resampled its scores back to the CT grid",))
    else:
        reasons = () if score >= 0.9 else (f"nnU-Net mean softmax {score:.2f}",)
        confidence = Quality(score, score < REVIEW_BELOW, reasons)
    # no atlas prior: prior_ml is the model's own volume
    return OrganEvidence(volume_ml, volume_ml, None, mean_score=score, confidence=confidence, method=METHOD)


def _wanted(organs: Sequence[str] | None, mappings: Sequence[LabelMapping]) -> list[str] | None:
    """The structure names asked for; a name neither in the TG-263 table nor given by the label map is refused."""
    if not organs:
        return None
    given = {name for m in mappings for name in m.names.values()}
    wanted: list[str] = []
    for organ in organs:
        name = standard_name(organ)
        if lookup(organ) is None and name not in given:
            raise OncoSegError(
                f"unknown organ {organ!r}: not in the TG-263 table, and no label is mapped to it"
            )
        if name not in wanted:
            wanted.append(name)
    return wanted


def _predict(
    model: NnUNetModel,
    array: np.ndarray,
    spacing_zyx: tuple[float, ...],
    mirroring: bool,
    step_size: float,
    threads: int,
    progress: bool,
) -> tuple[np.ndarray, dict[int, tuple[float, int]]]:
    """nnU-Net's own prediction of ``array`` (``[1, z, y, x]`` in the model's orientation): the label array,
    and per label value (mean winning softmax probability, voxels) on the network's grid.

    The steps of ``nnUNetPredictor.predict_single_npy_array`` (preprocess, sliding window, resample back),
    called one by one to read the class probabilities on the way and to keep torch on ``threads`` threads.
    """
    import torch

    previous = torch.get_num_threads()
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    try:
        with _quiet():
            from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
            from nnunetv2.inference.export_prediction import (
                convert_predicted_logits_to_segmentation_with_correct_shape as to_segmentation,
            )

            predictor = _predictor(model, mirroring, step_size, progress)
            properties = {"spacing": [float(s) for s in spacing_zyx]}
            plans, configuration = predictor.plans_manager, predictor.configuration_manager
            cases = PreprocessAdapterFromNpy(
                [array], None, [properties], None, plans, predictor.dataset_json, configuration, 1
            )
            case = next(cases)
            logits = predictor.predict_logits_from_preprocessed_data(case["data"]).cpu()
            confidence = _confidence(logits)
            segmentation = to_segmentation(
                logits, plans, configuration, predictor.label_manager, case["data_properties"],
                return_probabilities=False, num_threads_torch=threads,
            )  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    return np.asarray(segmentation), confidence


def _confidence(logits) -> dict[int, tuple[float, int]]:
    """Per class: the mean softmax probability of the voxels it wins, and how many it wins (chunked over z)."""
    import torch

    classes = logits.shape[0]
    sums, counts = torch.zeros(classes, dtype=torch.float64), torch.zeros(classes, dtype=torch.float64)
    for chunk in torch.split(logits, 8, dim=1):
        top, winner = torch.softmax(chunk.float(), dim=0).max(dim=0)
        sums += torch.bincount(winner.flatten(), weights=top.flatten().double(), minlength=classes)
        counts += torch.bincount(winner.flatten(), minlength=classes).double()
    return {v: (float(sums[v] / counts[v]), int(counts[v])) for v in range(1, classes) if counts[v] > 0}


def _predictor(model: NnUNetModel, mirroring: bool, step_size: float, progress: bool):
    import torch

    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as error:
        raise ModelError(f"nnunetv2 cannot be imported ({error}): {INSTALL_HINT}") from None
    predictor = nnUNetPredictor(
        tile_step_size=step_size,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=progress,
    )
    try:
        predictor.initialize_from_trained_model_folder(
            str(model.folder), use_folds=tuple(model.folds), checkpoint_name=model.checkpoint
        )
    except (
        KeyError,
        RuntimeError,
        ValueError,
        TypeError,
        AttributeError,
        OSError,
        EOFError,
        UnpicklingError,
    ) as error:
        raise ModelError(f"{model.folder.name}: nnU-Net cannot load this model ({_reason(error)})") from None
    return predictor


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    if "Could not find requested nnunet trainer" in text:
        found = re.search(r"trainer (\S+)", text)
        trainer = found.group(1) if found else "?"
        return f"its trainer class {trainer} is not in nnunetv2; custom trainers need $nnUNet_extTrainer"
    if isinstance(error, KeyError):
        return f"the checkpoint lacks {text}"
    return text.splitlines()[0][:160] if text else type(error).__name__


@contextlib.contextmanager
def _quiet():
    """nnU-Net prints notes on stdout (e.g. about CUDA); keep stdout for the CLI's own output."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield

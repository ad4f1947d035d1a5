"""Encode dataset images once with the frozen default encoder and cache them on disk for concept training.

Each cached item is one 2D image (or one slice of a volume): the float16 embedding (256×64×64 for LiteMedSAM),
the truth mask in the model's 256×256 input frame (longest side resized to 256, padded bottom/right), the
original and resized sizes, the dataset, split and concept. Images go through `Predictor` exactly as at
inference (same modality normalisation). Files live under ``<cache>/<model>/<dataset>/`` and are named by case,
slice and a hash of the image pixels, so a changed image or another model is never served a stale embedding.

Volumes (e.g. MSD Hippocampus) are sampled: a few foreground slices spread over the structure plus a few empty
slices per volume (``slices_per_volume``), not every slice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from oncoseg.concepts.vocabulary import concept_for_source
from oncoseg.data import open_dataset
from oncoseg.errors import OncoSegError

ENV_VAR = "ONCOSEG_EMBEDDING_CACHE"
FRAME = 256


def cache_root(folder: str | os.PathLike | None = None) -> Path:
    """``folder``, else ``$ONCOSEG_EMBEDDING_CACHE``, else ``~/.cache/oncoseg/embeddings``."""
    if folder is not None:
        return Path(folder).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "oncoseg" / "embeddings"


@dataclass
class CachedItem:
    dataset: str
    case_id: str
    z: int | None
    split: str
    concept: str
    features: np.ndarray  # float16 [C, 64, 64]
    mask: np.ndarray  # bool [256, 256] in the model's input frame
    original_size: tuple[int, int]
    input_size: tuple[int, int]


def to_frame(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A ``[H, W]`` mask → bool ``[256, 256]`` in the model's input frame, and the resized (unpadded) size."""
    h, w = mask.shape
    scale = FRAME / max(h, w)
    size = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    resized = F.interpolate(tensor, size, mode="bilinear", align_corners=False)[0, 0] > 0.5
    framed = np.zeros((FRAME, FRAME), bool)
    framed[: size[0], : size[1]] = resized.numpy()
    return framed, size


def pick_slices(mask: np.ndarray, foreground: int, empty: int, salt: str) -> list[int]:
    """Slice indices of a ``[z, y, x]`` mask: ``foreground`` slices spread evenly over those holding the
    structure, plus ``empty`` slices without it (chosen by a hash of ``salt``, reproducibly)."""
    area = mask.reshape(mask.shape[0], -1).sum(1)
    full = np.flatnonzero(area > 0)
    none = np.flatnonzero(area == 0)
    chosen = []
    if len(full):
        positions = np.linspace(0, len(full) - 1, min(foreground, len(full)) + 2)[1:-1]
        chosen = sorted({int(full[round(p)]) for p in positions})
    if len(none) and empty:
        rng = np.random.default_rng(int(hashlib.sha1(salt.encode()).hexdigest()[:8], 16))
        chosen += sorted(rng.choice(none, min(empty, len(none)), replace=False).tolist())
    return chosen


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


MIRRORED = "~mirrored"  # case id suffix of a left-right mirrored copy (training augmentation)


def is_mirrored(path: Path) -> bool:
    """True for the cache file of a mirrored copy (see ``encode_split(..., mirrored=True)``)."""
    return _safe(MIRRORED) in path.name


def _item_path(root: Path, model: str, dataset: str, case_id: str, z: int | None, digest: str) -> Path:
    name = _safe(case_id) + ("" if z is None else f"_z{z:03d}") + f"-{digest[:12]}.npz"
    return root / _safe(model) / dataset / name


def encode_split(
    dataset: str,
    split: str,
    predictor,
    cache: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    slices_per_volume: tuple[int, int] = (3, 1),
    limit: int | None = None,
    log=None,
    mirrored: bool = False,
) -> list[Path]:
    """Encode (or find in the cache) every image of ``dataset``'s ``split``; returns the cached files.
    ``mirrored``: the images flipped left-right instead (case ids end in ``~mirrored``), to augment training."""
    concept, target = concept_for_source(dataset)
    root = cache_root(cache)
    paths = []
    cases = open_dataset(dataset, data_root).cases(split)[:limit]
    for number, case in enumerate(cases):
        image, masks = case.load()
        if target not in masks:
            raise OncoSegError(f"{dataset} case {case.case_id} has no {target!r} mask")
        truth = masks[target]
        case_id = case.case_id
        if mirrored:
            axis = 2 if image.is_3d else 1  # x
            image = dataclasses.replace(image, array=np.flip(image.array, axis).copy())
            truth, case_id = np.flip(truth, axis).copy(), case_id + MIRRORED
        slices = pick_slices(truth, *slices_per_volume, salt=case.case_id) if image.is_3d else [None]
        predictor.set_image(image)
        for z in slices:
            paths.append(cache_slice(predictor, root, dataset, case_id, z, truth, split, concept.name))
        if log and (number + 1) % 50 == 0:
            log(f"{dataset}/{split}: {number + 1}/{len(cases)} cases")
    return paths


def cache_slice(
    predictor,
    root: Path,
    dataset: str,
    case_id: str,
    z: int | None,
    truth: np.ndarray,
    split: str,
    concept: str,
) -> Path:
    """The cache file of slice ``z`` of the image on ``predictor`` (encoded and written if missing)."""
    pixels = predictor.slice_pixels(z)
    digest = hashlib.sha1(np.ascontiguousarray(pixels, np.float32).tobytes()).hexdigest()
    path = _item_path(root, predictor.backend.name, dataset, case_id, z, digest)
    if not path.is_file():
        embedding = predictor.embedding(z)
        mask = truth if z is None else truth[z]
        framed, size = to_frame(mask)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp.npz")
        np.savez(
            temporary,
            features=embedding.features[0].numpy().astype(np.float16),
            mask=np.packbits(framed),
            original_size=np.array(mask.shape),
            input_size=np.array(size),
            meta=np.array([dataset, case_id, "" if z is None else str(z), split, concept]),
        )
        temporary.replace(path)
    return path


def load_item(path: str | os.PathLike) -> CachedItem:
    with np.load(path) as data:
        dataset, case_id, z, split, concept = data["meta"].tolist()
        return CachedItem(
            dataset=dataset,
            case_id=case_id,
            z=int(z) if z else None,
            split=split,
            concept=concept,
            features=data["features"],
            mask=np.unpackbits(data["mask"])[: FRAME * FRAME].reshape(FRAME, FRAME).astype(bool),
            original_size=tuple(int(v) for v in data["original_size"]),
            input_size=tuple(int(v) for v in data["input_size"]),
        )


def cached_items(
    datasets: list[str], split: str, cache: str | os.PathLike | None = None, model: str = "litemedsam"
) -> Iterator[Path]:
    """Cached files of ``split`` for ``datasets`` (whatever has been encoded so far)."""
    root = cache_root(cache) / _safe(model)
    for dataset in datasets:
        for path in sorted((root / dataset).glob("*.npz")):
            if path.name.endswith(".tmp.npz"):
                continue
            with np.load(path) as data:
                if data["meta"][3] == split:
                    yield path

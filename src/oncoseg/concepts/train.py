"""The ``concepts`` training phase: fit the concept head on cached embeddings of the datasets' train splits.

```yaml
phases:
  - name: concepts
    type: concepts
    datasets: [kvasir-seg, busi, ircadb-liver-slices, msd-hippocampus, brats2015]
    epochs: 30
    concepts: {width: 96, lr: 2.0e-3, samples_per_epoch: 2000, export: ../../src/oncoseg/concepts/concept_head.pt}
```

Images are encoded once with the frozen LiteMedSAM encoder (`oncoseg.concepts.embeddings`, cached on disk),
so an epoch only runs the small head. Every image teaches all concepts: its own concept's coarse mask and
presence (absent if its mask is empty, e.g. BUSI *normal*), and "absent" for every other concept (a colonoscopy
frame holds no liver). Draws are balanced between concepts (probability ∝ sqrt of each concept's image count).
``mirror`` lists datasets whose train images are also used mirrored left-right.
The epoch with the best validation score (mean over concepts of coarse Dice and presence accuracy, each concept
weighted by its number of validation images) is kept.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from oncoseg.concepts.detect import WEIGHTS_NAME, DetectSettings, save_head
from oncoseg.concepts.embeddings import cached_items, encode_split, is_mirrored, load_item
from oncoseg.concepts.head import ConceptHead
from oncoseg.concepts.vocabulary import concept_for_source
from oncoseg.errors import OncoSegError


@dataclass
class ConceptSettings:
    width: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    epochs: int = 30
    batch_size: int = 16
    samples_per_epoch: int | None = None  # None: the number of training images
    # datasets whose train images are also used mirrored left-right (encoded and cached like the others)
    mirror: list[str] = field(default_factory=list)
    # volumes: slices per volume [with the structure, without it], for all or as {dataset: [n, m]}
    slices_per_volume: list[int] | dict = field(default_factory=lambda: [2, 1])
    cache: str | None = None  # embedding cache folder (default: ~/.cache/oncoseg/embeddings)
    encode: bool = True  # encode missing images (False: train on what is cached)
    export: str | None = None  # also write the weights here (relative: to the run's output folder)
    detect: dict = field(default_factory=dict)  # DetectSettings stored with the weights
    # at most this many cases per dataset for the train and val splits (first ones in split order): an int for
    # every dataset, or {dataset: [train, val]} (null: all)
    limits: int | dict | None = None

    def limit(self, dataset: str, split: str, train_split: str = "train") -> int | None:
        if self.limits is None or isinstance(self.limits, int):
            return self.limits
        pair = self.limits.get(dataset) or [None, None]
        return pair[0] if split == train_split else pair[1]


class Cached:
    """Cached items of some datasets and split, in memory: features, 64×64 coarse targets, concept index."""

    def __init__(self, paths: list[Path], concepts: list[str]) -> None:
        self.features, self.targets, self.labels, self.present = [], [], [], []
        for path in paths:
            item = load_item(path)
            self.features.append(torch.from_numpy(item.features))
            mask = torch.from_numpy(item.mask.astype(np.float32))[None, None]
            self.targets.append(F.avg_pool2d(mask, 4)[0, 0].to(torch.float16))
            self.labels.append(concepts.index(item.concept))
            self.present.append(bool(item.mask.any()))
        self.labels_array = np.array(self.labels, int)

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        features = torch.stack([self.features[i] for i in indices]).float()
        targets = torch.stack([self.targets[i] for i in indices]).float()
        labels = torch.tensor([self.labels[i] for i in indices])
        present = torch.tensor([self.present[i] for i in indices], dtype=torch.float32)
        return features, targets, labels, present


def losses(head: ConceptHead, features, targets, labels, present) -> tuple[torch.Tensor, dict[str, float]]:
    """Presence BCE over all concepts + coarse mask BCE over all concepts + soft Dice on the image's concept."""
    presence, masks = head(features)
    k = masks.shape[1]
    onehot = F.one_hot(labels, k).float()
    presence_target = onehot * present[:, None]
    presence_loss = F.binary_cross_entropy_with_logits(presence, presence_target)
    mask_target = onehot[..., None, None] * targets[:, None]
    bce = F.binary_cross_entropy_with_logits(masks, mask_target)
    own = masks.gather(1, labels[:, None, None, None].expand(-1, 1, *masks.shape[2:]))[:, 0].sigmoid()
    inter = (own * targets).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (own.sum((1, 2)) + targets.sum((1, 2)) + 1)
    dice_loss = (dice * present).sum() / present.sum().clamp(min=1)
    total = presence_loss + 5 * bce + dice_loss
    return total, {"presence": presence_loss.item(), "bce": bce.item(), "dice": dice_loss.item()}


@torch.inference_mode()
def validate(head: ConceptHead, data: Cached, concepts: list[str]) -> dict[str, Any]:
    """Per concept: coarse Dice (images with the concept) and presence accuracy (all images of it)."""
    head.eval()
    dice: dict[int, list[float]] = {}
    correct: dict[int, list[bool]] = {}
    for start in range(0, len(data), 32):
        indices = list(range(start, min(start + 32, len(data))))
        features, targets, labels, present = data.batch(indices)
        presence, masks = head(features)
        for row, label in enumerate(labels.tolist()):
            prob = presence[row, label].sigmoid().item()
            correct.setdefault(label, []).append((prob > 0.5) == bool(present[row]))
            if present[row]:
                pred = (masks[row, label].sigmoid() > 0.5).float()
                truth = (targets[row] > 0.5).float()
                denom = pred.sum() + truth.sum()
                dice.setdefault(label, []).append(float(2 * (pred * truth).sum() / denom) if denom else 1.0)
    head.train()
    per = {
        concepts[k]: {
            "coarse_dice": float(np.mean(dice.get(k, [np.nan]))),
            "presence_accuracy": float(np.mean(v)),
            "images": len(v),
        }
        for k, v in sorted(correct.items())
    }
    # (coarse Dice + presence accuracy) / 2 per concept, averaged with each concept weighted by its number of
    # validation images, so that a concept with a handful of val slices (BraTS: 5) cannot pick the epoch alone
    values = [((v["coarse_dice"] if v["coarse_dice"] == v["coarse_dice"] else 0) + v["presence_accuracy"]) / 2
              for v in per.values()]  # fmt: skip
    weights = [v["images"] for v in per.values()]
    score = float(np.average(values, weights=weights)) if values else 0.0
    return {"score": score, "concepts": per}


def _per_volume(setting: list[int] | dict, dataset: str) -> tuple[int, int]:
    value = setting.get(dataset, [2, 1]) if isinstance(setting, dict) else setting
    return int(value[0]), int(value[1])


def gather(config, phase, split: str, settings: ConceptSettings, log=print) -> list[Path]:
    """Cached files for the phase's datasets and ``split``, encoding what is missing first (if allowed)."""
    paths: list[Path] = []
    predictor = None
    for dataset in phase.datasets:
        concept_for_source(dataset)  # a dataset no concept is trained from fails here, before encoding
        limit = settings.limit(dataset, split, phase.train_split)
        # the images as they are, and (train split, `mirror` datasets) their left-right mirrored copies
        variants = [False, True] if dataset in settings.mirror and split == phase.train_split else [False]
        if settings.encode:
            if predictor is None:
                from oncoseg.models.spec import ModelSpec

                predictor = ModelSpec().build_predictor()
            for mirrored in variants:
                paths += encode_split(
                    dataset, split, predictor, settings.cache, config.data_root,
                    _per_volume(settings.slices_per_volume, dataset), limit, log, mirrored=mirrored,
                )  # fmt: skip
        else:
            cached = list(cached_items([dataset], split, settings.cache))
            for mirrored in variants:
                paths += [p for p in cached if is_mirrored(p) == mirrored][:limit]
    if not paths:
        raise OncoSegError(f"phase {phase.name}: no {split} images for {', '.join(phase.datasets)}")
    return paths


def run_concept_phase(config, phase, folder: Path, progress: bool = True) -> dict[str, Any]:
    """Train the concept head for ``phase`` in ``folder``; writes ``concept_head.pt`` and ``done.json``."""
    began = time.perf_counter()
    try:
        settings = ConceptSettings(**dict(phase.concepts or {}))
    except TypeError as error:
        raise OncoSegError(f"phase {phase.name}: concepts settings: {error}") from None
    if phase.epochs:
        settings.epochs = phase.epochs
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    names = []
    for dataset in phase.datasets:
        concept = concept_for_source(dataset)[0].name
        if concept not in names:
            names.append(concept)
    log = print if progress else (lambda *_: None)
    train_data = Cached(gather(config, phase, phase.train_split, settings, log), names)
    val_data = Cached(gather(config, phase, phase.val_split, settings, log), names)
    head = ConceptHead(len(names), in_channels=train_data.features[0].shape[0], width=settings.width)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    per_epoch = settings.samples_per_epoch or len(train_data)
    steps = max(1, per_epoch // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, settings.lr, total_steps=steps * settings.epochs, pct_start=0.1
    )
    counts = np.bincount(train_data.labels_array, minlength=len(names)).astype(float)
    weights = np.sqrt(counts)[train_data.labels_array] / counts[train_data.labels_array]
    weights /= weights.sum()
    best, best_state, history = -1.0, None, []
    for epoch in range(settings.epochs):
        rng = np.random.default_rng([config.seed, epoch])
        draws = rng.choice(len(train_data), steps * settings.batch_size, p=weights)
        head.train()
        totals = []
        for step in range(steps):
            batch = train_data.batch(draws[step * settings.batch_size : (step + 1) * settings.batch_size])
            loss, _parts = losses(head, *batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            totals.append(loss.item())
        result = validate(head, val_data, names)
        history.append({"epoch": epoch, "loss": float(np.mean(totals)), **result})
        log(
            f"epoch {epoch + 1}/{settings.epochs}: loss {np.mean(totals):.4f}, val score {result['score']:.4f}"
        )
        if result["score"] > best:
            best = result["score"]
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    info = {
        "trained_on": {d: phase.train_split for d in phase.datasets},
        "train_images": len(train_data),
        "val_images": len(val_data),
        "best_val": max(history, key=lambda h: h["score"]),
        "epochs": settings.epochs,
        "encoder": "litemedsam",
    }
    weights_path = folder / WEIGHTS_NAME
    detect_settings = DetectSettings(**settings.detect)
    save_head(weights_path, head, names, detect_settings, info)
    if settings.export:
        export = Path(settings.export)
        if not export.is_absolute():
            export = (Path(config.output) / export).resolve()  # relative to the run's output folder
        save_head(export, head, names, detect_settings, info)
    record = {
        "phase": phase.name,
        "type": "concepts",
        "folder": str(folder),
        "weights": str(weights_path),
        "concepts": names,
        "train_images": len(train_data),
        "val_images": len(val_data),
        "best_val_score": best,
        "seconds": round(time.perf_counter() - began, 1),
        "history": history,
    }
    (folder / "done.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record

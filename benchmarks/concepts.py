"""Text prompts on the default model (LiteMedSAM + the concept head), measured on the test splits.

    .venv/bin/python benchmarks/concepts.py            # → benchmarks/results/concepts.json (and a table)

Only the concept's name is given (no box, no click). Per dataset's test split (never training images):

* presence accuracy: the share of images where "found something" agrees with "the structure is there"
  (BUSI's test split includes its *normal* images, whose masks are empty: they must come back empty);
* instance F1 at IoU 0.5: truth instances are the connected components (8-connected) of the truth mask,
  predicted instances the masks `detect` returns; greedy one-to-one matching by IoU, counts summed over images;
* Dice of the union of the predicted instances against the truth mask, averaged over the images that contain
  the structure (an empty prediction there scores 0). Images without the structure are not in the Dice mean:
  they count in presence accuracy (and "empty images returned empty").

Volumes (MSD Hippocampus, BraTS) are measured on 2D slices: per test volume the slices the embedding cache
samples (hippocampus: 2 through the structure + 1 without it; BraTS: 4 + 1); hippocampus: the first 12 test
volumes. They are also measured whole, as ``oncoseg segment VOLUME --text ... --3d`` runs (``volumes`` in the
JSON): every slice detected, then the instances joined in 3D (`Backend.segment_text_volume`); 3D Dice of the
union against the truth, and 3D instance F1 at IoU 0.5 (truth instances: 26-connected components). Embeddings come from the cache `oncoseg.concepts.embeddings`
writes (the encoder's bf16 output stored as float16, so the same numbers `oncoseg segment --text` computes);
missing ones are encoded here. Masks are drawn at the image's original resolution.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from oncoseg.concepts.detect import load_head, shipped_weights
from oncoseg.concepts.embeddings import cache_root, cache_slice, encode_split, load_item
from oncoseg.concepts.vocabulary import concept_for_source, matcher_kind
from oncoseg.data import get_info, open_dataset
from oncoseg.models.base import ImageEmbedding
from oncoseg.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "concepts.json"
DATASETS = ("kvasir-seg", "busi", "ircadb-liver-slices", "msd-hippocampus", "brats2015")
SLICES = {"brats2015": (4, 1)}  # slices per test volume (with, without the structure); default (2, 1)
LIMITS = {"msd-hippocampus": 12}  # test cases measured (the first in split order); default: all
# whole test volumes measured in 3D (the first in split order)
VOLUME_LIMITS = {"msd-hippocampus": 12, "brats2015": 1}
# box-prompted Dice already measured by benchmarks/accuracy.py (results/accuracy.json): key, group, what
BOX_DICE = {
    "kvasir-seg": ("kvasir", "all", "Kvasir-SEG test (100), GT box"),
    "busi": ("busi", "all", "BUSI all 647 lesion images, GT box"),
    "msd-hippocampus": ("hippocampus", "per_slice", "26 volumes, GT box on every slice, 3D Dice"),
}


def instances(mask: np.ndarray) -> list[np.ndarray]:
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    return [labels == i for i in range(1, count + 1)]


def match_instances(predicted: list[np.ndarray], truth: list[np.ndarray], threshold: float = 0.5):
    """(true positives, false positives, false negatives) by greedy one-to-one IoU matching."""
    pairs = []
    for i, p in enumerate(predicted):
        for j, t in enumerate(truth):
            union = np.logical_or(p, t).sum()
            iou = np.logical_and(p, t).sum() / union if union else 0.0
            if iou >= threshold:
                pairs.append((iou, i, j))
    used_p, used_t = set(), set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    tp = len(used_p)
    return tp, len(predicted) - tp, len(truth) - tp


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, truth).sum() / total)


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.array(values, float)
    return {"n": len(a), "mean": float(a.mean()), "sd": float(a.std()), "median": float(np.median(a))}


def box_dice(dataset: str) -> dict | None:
    if dataset not in BOX_DICE:
        return None
    path = REPO / "benchmarks" / "results" / "accuracy.json"
    if not path.exists():
        return None
    key, group, what = BOX_DICE[dataset]
    result = json.loads(path.read_text(encoding="utf-8"))["datasets"].get(key, {}).get("ours", {})
    found = result.get(group)
    return {"mean": found["mean"], "n": found["n"], "what": what} if found else None


def run_dataset(dataset: str, predictor: Predictor, loaded, limit: int | None) -> dict:
    concept, target = concept_for_source(dataset)
    began = time.perf_counter()
    limit = limit or LIMITS.get(dataset)
    paths = encode_split(
        dataset, "test", predictor, slices_per_volume=SLICES.get(dataset, (2, 1)), limit=limit
    )
    cases = {c.case_id: c for c in open_dataset(dataset).cases("test")}
    loaded_case: dict = {}
    rows = []
    tp = fp = fn = 0
    for path in paths:
        item = load_item(path)
        case = cases[item.case_id]
        if loaded_case.get("id") != case.case_id:
            loaded_case = {"id": case.case_id, "masks": case.load()[1]}
        truth = loaded_case["masks"][target]
        truth = truth if item.z is None else truth[item.z]
        embedding = ImageEmbedding(
            torch.from_numpy(item.features.astype(np.float32))[None],
            item.original_size,
            item.input_size,
            "litemedsam",
        )
        found = predictor.backend.detect(embedding, concept.name)
        union = np.logical_or.reduce(found.masks, axis=0) if len(found.masks) else np.zeros_like(truth)
        a, b, c = match_instances(list(found.masks), instances(truth))
        tp, fp, fn = tp + a, fp + b, fn + c
        rows.append(
            {
                "case_id": case.case_id,
                "z": item.z,
                "category": case.category or "",
                "present": bool(truth.any()),
                "predicted": bool(union.any()),
                "instances_predicted": len(found.masks),
                "dice": dice(union, truth) if truth.any() else None,
            }
        )
    present = [r for r in rows if r["present"]]
    empty = [r for r in rows if not r["present"]]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    result = {
        "concept": concept.name,
        "text": concept.name,
        "images": len(rows),
        "with_structure": len(present),
        "without_structure": len(empty),
        "dice": stats([r["dice"] for r in present]),
        "presence_accuracy": float(np.mean([r["present"] == r["predicted"] for r in rows])),
        "empty_returned_empty": float(np.mean([not r["predicted"] for r in empty])) if empty else None,
        "instances": {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall},
        "instance_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "box_prompt_dice": box_dice(dataset),
        "paper_dice": get_info(dataset).paper_dice,
        "unit": "slices" if get_info(dataset).dim == "3d" else "images",
        "seconds": round(time.perf_counter() - began, 1),
        "rows": rows,
    }
    categories = sorted({r["category"] for r in rows if r["category"]})
    if categories:
        result["by_category"] = {
            name: {
                "images": len([r for r in rows if r["category"] == name]),
                "dice": stats([r["dice"] for r in present if r["category"] == name]),
                "returned_empty": float(np.mean([not r["predicted"] for r in rows if r["category"] == name])),
            }
            for name in categories
        }
    return result


class CachedVolume:
    """What `Backend.segment_text_volume` reads from a predictor (the image and each slice's embedding), with the
    embeddings taken from (or added to) the embedding cache, so a rerun does not encode again."""

    def __init__(
        self, predictor: Predictor, dataset: str, case, truth: np.ndarray, concept: str, split: str = "test"
    ) -> None:
        self.predictor, self.dataset, self.case, self.split = predictor, dataset, case, split
        self.truth, self.concept = truth, concept
        self.image = predictor.image

    def embedding(self, z: int) -> ImageEmbedding:
        path = cache_slice(
            self.predictor,
            cache_root(),
            self.dataset,
            self.case.case_id,
            z,
            self.truth,
            self.split,
            self.concept,
        )
        item = load_item(path)
        features = torch.from_numpy(item.features.astype(np.float32))[None]
        return ImageEmbedding(features, item.original_size, item.input_size, "litemedsam")


def run_volumes(dataset: str, predictor: Predictor, limit: int | None) -> dict:
    """Whole test volumes through the --3d text path: 3D Dice of the union and 3D instance F1."""
    concept, target = concept_for_source(dataset)
    began = time.perf_counter()
    rows, tp, fp, fn = [], 0, 0, 0
    for case in open_dataset(dataset).cases("test")[: limit or VOLUME_LIMITS[dataset]]:
        image, masks = case.load()
        truth = masks[target]
        predictor.set_image(image)
        volume = CachedVolume(predictor, dataset, case, truth, concept.name)
        labels, scores = predictor.backend.segment_text_volume(volume, concept.name)
        objects = [labels == i for i in range(1, len(scores) + 1)]
        a, b, c = match_instances(objects, instances(truth))
        tp, fp, fn = tp + a, fp + b, fn + c
        rows.append({"case_id": case.case_id, "slices": image.num_slices, "objects": len(objects),
                     "dice": dice(labels > 0, truth)})  # fmt: skip
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "concept": concept.name,
        "volumes": len(rows),
        "dice_3d": stats([r["dice"] for r in rows]),
        "instances_3d": {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall},
        "instance_f1_3d": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "seconds": round(time.perf_counter() - began, 1),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--limit", type=int, help="at most this many test cases per dataset")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument(
        "--no-volumes",
        action="store_true",
        help="skip the whole-volume (--3d) measurement of the 3D datasets",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    loaded = load_head()
    predictor = Predictor("litemedsam")
    results = {}
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        results[dataset] = run_dataset(dataset, predictor, loaded, args.limit)
        r = results[dataset]
        print(
            f"{dataset:<20} {r['concept']:<14} {r['images']:>4} {r['unit']:<7} Dice {r['dice'].get('mean', float('nan')):.3f} "
            f"(n={r['dice']['n']})  presence {r['presence_accuracy']:.3f}  F1@0.5 {r['instance_f1']:.3f}  "
            f"empty→empty {r['empty_returned_empty'] if r['empty_returned_empty'] is None else round(r['empty_returned_empty'], 3)}",
            flush=True,
        )
    volumes = {}
    for dataset in [] if args.no_volumes else [d for d in results if d in VOLUME_LIMITS]:
        volumes[dataset] = v = run_volumes(dataset, predictor, args.limit)
        print(
            f"{dataset:<20} {v['concept']:<14} {v['volumes']:>4} volumes 3D Dice {v['dice_3d']['mean']:.3f}  "
            f"3D instance F1@0.5 {v['instance_f1_3d']:.3f}  ({v['seconds']:.0f} s)",
            flush=True,
        )
    document = {
        "benchmark": "concepts",
        "command": "python benchmarks/concepts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "weights": str(shipped_weights().relative_to(REPO)) if shipped_weights().is_relative_to(REPO) else "",
        "head": {"concepts": loaded.concepts, "settings": loaded.settings.__dict__, "info": loaded.info},
        "matcher": matcher_kind(),
        "prompt": "the concept's name as text only (no box, no click)",
        "dice_rule": "mean over test images that contain the structure; an empty prediction there scores 0; "
        "images without it are scored by presence accuracy only",
        "datasets": results,
        "volumes": volumes,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

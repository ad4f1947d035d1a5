"""Train the mask-prompt decoder (`oncoseg.models.mask_prompt`): LiteMedSAM's decoder taught to follow the
neighbour slice's mask in 3D propagation.

Three steps, each resumable:

    # 1. image embeddings (default student encoder) and truth of the hippocampus TRAIN split, one file per case
    nice -n 19 .venv/bin/python -m oncoseg.train.mask_prompt cache --split train --limit 60 --out /tmp/mp/train
    #    (--zoom-out 2.5: each slice widened 2.5 times with mirrored surroundings, the object a smaller share)
    # 2. fine-tune (checkpoint every --save-every steps; run again to resume)
    nice -n 19 .venv/bin/python -m oncoseg.train.mask_prompt train --cache /tmp/mp/train --run /tmp/mp/run
    # 3. write the adapter file the backend loads
    nice -n 19 .venv/bin/python -m oncoseg.train.mask_prompt export --run /tmp/mp/run --out weights.pt

Each training sample imitates one step of the walk (`oncoseg.volume.walk`) moving away from the truth's largest
slice: the neighbour slice's mask is either the base model's answer to the neighbour's GT box (its real errors)
or the neighbour's truth perturbed as the walk's masks err (eroded 1-2 px, sometimes dilated, shifted); the
prompt box is that mask's box enlarged as the walk enlarges it, and the dense prompt is that mask as +-8 over
the frame (`dense_prompt`; the backend gives the adapter the neighbour's logits binarised the same way, so
what it reads does not depend on how confident the previous decode was). The target is the truth on the slice,
empty past the object's end (where the walk must stop). Loss: Dice + BCE on the low-resolution logits over the
image's part of the frame, plus the squared error of the quality score against the mask's IoU (the walk's score
stop rule reads it). Forward and backward run in bfloat16 autocast (CPU).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from oncoseg.errors import OncoSegError
from oncoseg.io import atomic_write_path
from oncoseg.prompts import box_from_mask

# LoRA on the decoder's transformer; trained fully: the dense prompt's downscaling path, the mask hypernetwork
# that the single-mask output uses, and the quality head. The upscaling head stays the base decoder's.
TARGETS = r"mask_decoder\.transformer\..*(q_proj|k_proj|v_proj|out_proj|lin1|lin2)"
UNFREEZE = (
    "prompt_encoder.mask_downscaling",
    "mask_decoder.output_hypernetworks_mlps.0",
    "mask_decoder.iou_prediction_head",
)
BOX_MARGIN, MIN_MARGIN_PX = 0.05, 1.0  # the walk's (PropagationSettings defaults)
EDGE = 2  # slices cached beyond the truth at each end (empty targets: where the walk must stop)
# How the neighbour's mask is made (`make_batch`): shares from the base model and from the slice before the
# neighbour (lag), the erosion (-) / dilation (+) choices and shift of `perturbed`, the share of steps past the end
RECIPES = {
    "v1": {"model_share": 0.4, "lag_share": 0.0, "grow": (-2, -1, -1, 0, 0, 1), "shift": 2, "end_share": 0.0},
    "v2": {"model_share": 0.35, "lag_share": 0.2, "grow": (-3, -2, -1, -1, 0, 0, 1, 2), "shift": 3,
           "end_share": 0.15},
}  # fmt: skip
DENSE_LEVEL = 8.0  # the dense prompt is the neighbour's mask as +-this (`dense_prompt`), not its raw logits


def lora_settings():
    from oncoseg.train.lora import LoraSettings

    return LoraSettings(r=8, alpha=16, dropout=0.0, targets=TARGETS, unfreeze=UNFREEZE)


# ------------------------------------------------------------------------------------------------ embeddings
def cache_cases(
    split: str,
    limit: int | None,
    out: Path,
    threads: int = 1,
    dataset: str = "msd-hippocampus",
    zoom_out: float = 1.0,
):
    """Write ``out/<case>.pt`` per case of ``split`` (features float16, truth on the image grid and in the
    256-frame, the slices kept); cases already written are skipped (resumable). ``zoom_out`` > 1 widens every
    slice to that many times its size (`zoomed_out`), so the object covers a smaller share of the frame."""
    from oncoseg.evaluate.interactive import dataset_cases
    from oncoseg.models.spec import ModelSpec

    if split == "test":
        raise OncoSegError("the mask-prompt decoder never trains or chooses on the test split")
    out.mkdir(parents=True, exist_ok=True)
    predictor = ModelSpec(threads=threads).build_predictor(cache_slices=8)
    for i, case in enumerate(dataset_cases(dataset, split=split, limit=limit), start=1):
        path = out / f"{case.case_id}_{case.target}.pt"
        if path.exists():
            continue
        started = time.perf_counter()
        image, truth = (
            zoomed_out(case.image, case.truth, zoom_out) if zoom_out > 1 else (case.image, case.truth)
        )
        count = cache_volume(predictor, image, truth, case.modality, path)
        print(f"[{i}] {case.case_id}: {count} slices, {time.perf_counter() - started:.1f} s", flush=True)


def zoomed_out(image, truth: np.ndarray, factor: float):
    """``image`` and ``truth`` with each slice widened to ``factor`` times its height and width: the image
    mirrored outwards (anatomy-like surroundings, not a black frame), the truth empty there. The hippocampus
    covers 5-15 % of its slice's frame; zoomed out 2-3 times it is as small as the objects the adapter first
    lost (BraTS TC/ET 2-3 %, CT organs 0.2-3 %)."""
    h, w = truth.shape[1:]
    pad_y, pad_x = round(h * (factor - 1) / 2), round(w * (factor - 1) / 2)
    widths = ((0, 0), (pad_y, pad_y), (pad_x, pad_x))
    array = np.pad(image.array, widths, mode="symmetric")
    return dataclasses.replace(image, array=array), np.pad(np.asarray(truth, bool), widths)


def cache_volume(predictor, image, truth: np.ndarray, modality: str | None, path: Path) -> int:
    """Write one volume's cache file (the truth's slices and `EDGE` more each side); returns the slice count."""
    transform = predictor.backend.transform
    truth = np.asarray(truth, bool)
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    if not len(zs):
        raise OncoSegError("the truth of this volume is empty")
    keep = list(range(max(0, zs[0] - EDGE), min(len(truth), zs[-1] + EDGE + 1)))
    predictor.set_image(image, modality)
    features = torch.cat([predictor.embedding(z).features.to(torch.float16) for z in keep])
    mask = torch.from_numpy(truth[keep].astype(np.float32))[:, None]
    frame = torch.stack([transform.image_to_frame(m)[0] > 0.5 for m in mask])
    payload = {
        "features": features,
        "zs": keep,
        "truth": torch.from_numpy(truth[keep]),
        "frame_truth": frame,
        "largest": int(np.argmax(truth.sum(axis=(1, 2)))),
        "original_size": tuple(truth.shape[1:]),
    }
    with atomic_write_path(path) as temporary:
        torch.save(payload, temporary)
    return len(keep)


def load_cache(folder: Path) -> list[dict]:
    files = sorted(f for f in Path(folder).glob("*.pt") if not f.name.startswith("."))
    if not files:
        raise OncoSegError(f"no cached cases in {folder}: run 'cache' first")
    return [torch.load(f, map_location="cpu", weights_only=True) for f in files]


# ------------------------------------------------------------------------------------------------ the model
def decode(parts, features: torch.Tensor, boxes: torch.Tensor, mask_in: torch.Tensor | None):
    """``(B, 256, 256)`` low-resolution logits and ``(B,)`` quality scores for B slices (features
    ``(B, 256, 64, 64)``, frame boxes ``(B, 4)``, dense prompts ``(B, 1, 256, 256)`` or None), through the same
    `fast_decoder` arithmetic the backend runs."""
    from oncoseg.models import fast_decoder

    sparse, dense = parts.prompt_encoder(points=None, boxes=boxes, masks=mask_in)
    dense = dense.expand(features.shape[0], -1, -1, -1)
    pe = parts.prompt_encoder.get_dense_pe()
    state = {
        "features": features.flatten(2).transpose(1, 2),
        "keys": None,
        "key_pe": pe.flatten(2).transpose(1, 2),
        "first_kv": None,
        "size": features.shape[-2:],
    }
    decoded = fast_decoder.decode_tokens(parts.mask_decoder, state, sparse, dense)
    return fast_decoder.upscale(parts.mask_decoder, decoded)[:, 0], decoded.scores[:, 0]


def frame_box(mask: np.ndarray, transform, size, tight: bool = False) -> np.ndarray | None:
    """The walk's prompt box (frame coordinates) from a mask on the image grid; None for an empty mask."""
    if not mask.any():
        return None
    box = box_from_mask(mask)
    if not tight:
        box = box.enlarged(BOX_MARGIN, MIN_MARGIN_PX, mask.shape)
    return transform.apply_boxes(box.as_array()[None], size)[0]


class Pairs:
    """Random walk steps over cached cases (see the module docstring): ``(case, target row, direction)`` with
    the direction pointing away from the truth's largest slice, as the walk moves."""

    def __init__(self, cases: list[dict], seed: int = 0):
        self.cases = cases
        self.steps = []
        for ci, case in enumerate(cases):
            has = case["truth"].flatten(1).any(1).numpy()
            zs, largest = case["zs"], case["largest"]
            for row, z in enumerate(zs):
                if z == largest:
                    continue
                d = 1 if z > largest else -1
                if 0 <= row - d < len(zs) and has[row - d]:
                    self.steps.append((ci, row, d))
        if not self.steps:
            raise OncoSegError("no training steps in the cached cases")
        self.rng = np.random.default_rng(seed)

        self.ends = [(ci, row, d) for ci, row, d in self.steps if not cases[ci]["truth"][row].any()]

    def draw(self, n: int, end_share: float = 0.15) -> list[tuple[int, int, int]]:
        """``n`` steps; about ``end_share`` of them past the object's end (empty target)."""
        out = []
        for _ in range(n):
            pool = self.ends if self.ends and self.rng.random() < end_share else self.steps
            out.append(pool[int(self.rng.integers(0, len(pool)))])
        return out


def dense_prompt(mask: torch.Tensor) -> torch.Tensor:
    """The dense prompt the adapter reads: a mask over the frame (anything > 0 inside) as ``±DENSE_LEVEL``."""
    return torch.where(mask > 0, DENSE_LEVEL, -DENSE_LEVEL).float()


def perturbed(truth: np.ndarray, rng, grow=(-3, -2, -1, -1, 0, 0, 1, 2), shift: int = 3) -> np.ndarray:
    """The neighbour's truth made to look like a walk's mask: mostly eroded (the model's masks sit 1-2 px inside
    the object), sometimes dilated, shifted by up to 2 px."""
    from scipy import ndimage

    mask = truth.copy()
    grow = rng.choice(grow)
    if grow < 0:
        eroded = ndimage.binary_erosion(mask, iterations=-grow)
        mask = eroded if eroded.sum() >= 4 else mask
    elif grow > 0:
        mask = ndimage.binary_dilation(mask, iterations=grow)
    dy, dx = rng.integers(-shift, shift + 1, 2) * (rng.random() < 0.5)
    return np.roll(mask, (int(dy), int(dx)), axis=(0, 1))


def make_batch(base, pairs: Pairs, steps, transform, recipe: str = "v2", rng=None):
    """Features, frame boxes, dense prompts, frame targets and valid regions for ``steps``. The neighbour's mask
    is (shares from ``RECIPES[recipe]``) the base model's answer to the neighbour's GT box (tight or enlarged
    as the walk enlarges boxes), the truth of the slice before the neighbour `perturbed` (a walk lagging behind
    a moving or shrinking object), or the neighbour's truth `perturbed`; the box is that mask's box enlarged
    as the walk does."""
    rng = rng or pairs.rng
    settings = RECIPES[recipe]
    model_share, lag_share = settings["model_share"], settings["lag_share"]
    rows = []
    with torch.no_grad():
        for ci, row, d in steps:
            case = pairs.cases[ci]
            size = tuple(case["original_size"])
            neighbour = case["truth"][row - d].numpy()
            before = row - 2 * d
            draw = rng.random()
            if draw < lag_share and 0 <= before < len(case["zs"]) and case["truth"][before].any():
                neighbour = case["truth"][before].numpy()  # the walk lagging one slice behind the object
                mask = perturbed(neighbour, rng, settings["grow"], settings["shift"])
            elif draw < lag_share + model_share:
                box = frame_box(neighbour, transform, size, tight=rng.random() < 0.5)
                features = case["features"][row - d : row - d + 1].float()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits, _ = decode(base, features, torch.tensor(box[None], dtype=torch.float32), None)
                mask = (transform.logits_to_image(logits.float(), size) > 0).numpy()[0]
            else:
                mask = perturbed(neighbour, rng)
            box = frame_box(mask, transform, size)
            if box is None:
                continue
            frame = transform.image_to_frame(torch.from_numpy(mask.astype(np.float32))[None])[0] > 0.5
            rows.append(
                (case["features"][row].float(), box, dense_prompt(frame), case["frame_truth"][row], size)
            )
    if not rows:
        return None
    feats = torch.stack([r[0] for r in rows])
    boxes = torch.tensor(np.stack([r[1] for r in rows]), dtype=torch.float32)
    dense = torch.stack([r[2] for r in rows])[:, None]
    target = torch.stack([r[3] for r in rows]).float()
    valid = torch.zeros_like(target)
    for i, r in enumerate(rows):
        h, w = transform.input_size(r[4])
        valid[i, :h, :w] = 1
    return feats, boxes, dense, target, valid


def losses(logits, scores, target, valid) -> tuple[torch.Tensor, dict]:
    """Dice + BCE over the valid part of the frame, plus the quality score's squared error against the IoU."""
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid).sum((1, 2))
    bce = bce / valid.sum((1, 2))
    p = torch.sigmoid(logits) * valid
    dice = 1 - (2 * (p * target).sum((1, 2)) + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
    with torch.no_grad():
        hard = (logits > 0).float() * valid
        inter = (hard * target).sum((1, 2))
        union = ((hard + target) > 0).float().sum((1, 2))
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
        hard_dice = torch.where(
            (hard.sum((1, 2)) + target.sum((1, 2))) > 0,
            2 * inter / (hard.sum((1, 2)) + target.sum((1, 2))).clamp(min=1),
            torch.ones_like(inter),
        )
    quality = (scores - iou) ** 2
    total = (dice + bce + quality).mean()
    return total, {"dice_loss": float(dice.detach().mean()), "bce": float(bce.detach().mean()),
                   "quality": float(quality.detach().mean()),
                   "dice": float(hard_dice.mean())}  # fmt: skip


def build_parts(checkpoint_state: dict | None = None):
    """(trainable parts with LoRA, frozen base parts, the backend's frame transform)."""
    from oncoseg.models import mask_prompt
    from oncoseg.models.litemedsam import LiteMedSAMBackend, build_model
    from oncoseg.train.lora import apply_lora

    model = build_model()
    base = mask_prompt.parts_of(model)
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    parts = apply_lora(mask_prompt.parts_of(model), lora_settings())
    if checkpoint_state is not None:
        parts.load_state_dict(checkpoint_state, strict=False)
    return parts, base, LiteMedSAMBackend.transform


# ------------------------------------------------------------------------------------------------ training
def train(
    cache: Path,
    run: Path,
    steps: int = 600,
    batch: int = 8,
    lr: float = 3e-4,
    save_every: int = 25,
    snapshot_every: int = 100,
    val_cache: Path | None = None,
    val_pairs: int = 48,
    seed: int = 0,
    recipe: str = "v2",
    minutes: float | None = None,
) -> Path:
    """Fine-tune; ``run/last.pt`` (adapter tensors, optimizer, sampler state, curve) is written every
    ``save_every`` steps and a run resumes from it; ``run/step_N.pt`` adapter files every
    ``snapshot_every`` steps; ``run/curve.csv`` holds the training curve (and, with ``val_cache``, Dice of
    fixed validation steps). Stops after ``steps`` or ``minutes``."""
    from oncoseg.train.lora import adapter_state

    run.mkdir(parents=True, exist_ok=True)
    last = run / "last.pt"
    saved = torch.load(last, map_location="cpu", weights_only=False) if last.exists() else None
    parts, base, transform = build_parts(saved["adapter"] if saved else None)
    trainable = [p for p in parts.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-4)
    pairs = Pairs(load_cache(cache), seed=seed)
    step, curve = 0, []
    if saved:
        optimizer.load_state_dict(saved["optimizer"])
        pairs.rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        step, curve = saved["step"], saved["curve"]
        print(f"resumed at step {step}", flush=True)
    val = None
    if val_cache is not None:
        val_set = Pairs(load_cache(val_cache), seed=1234)
        val = make_batch(base, val_set, val_set.draw(val_pairs), transform, recipe)
        if step == 0:
            curve.append({"step": 0, **evaluate(parts, val)})
            print(f"step 0 val {curve[-1]}", flush=True)
    started, window = time.perf_counter(), []
    while step < steps and (minutes is None or time.perf_counter() - started < 60 * minutes):
        data = make_batch(base, pairs, pairs.draw(batch, RECIPES[recipe]["end_share"]), transform, recipe)
        if data is None:
            continue
        feats, boxes, dense, target, valid = data
        parts.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, scores = decode(parts, feats, boxes, dense)
        loss, parts_of_loss = losses(logits.float(), scores.float(), target, valid)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        step += 1
        window.append({"loss": float(loss.detach()), **parts_of_loss})
        if step % save_every == 0 or step == steps:
            row = {"step": step, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}
            window = []
            if val is not None:
                row.update({f"val_{k}": v for k, v in evaluate(parts, val).items()})
            curve.append(row)
            print(json.dumps(row), flush=True)
            state = {
                "step": step,
                "adapter": adapter_state(parts),
                "optimizer": optimizer.state_dict(),
                "rng": pairs.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "curve": curve,
                "recipe": recipe,
            }
            with atomic_write_path(last) as temporary:
                torch.save(state, temporary)
            write_curve(run / "curve.csv", curve)
            if step % snapshot_every == 0:
                export_parts(parts, run / f"step_{step}.pt", step, curve)
    return last


def evaluate(parts, val) -> dict:
    """Loss terms and Dice of the fixed validation steps."""
    parts.eval()
    with torch.no_grad():
        feats, boxes, dense, target, valid = val
        logits, scores = decode(parts, feats, boxes, dense)
        _, terms = losses(logits, scores, target, valid)
    return terms


def write_curve(path: Path, curve: list[dict]) -> None:
    keys = sorted({k for row in curve for k in row}, key=lambda k: (k != "step", k))
    with atomic_write_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(curve)


def export_parts(parts, out: Path, step: int, curve: list[dict]) -> Path:
    """Write the adapter of ``parts`` (LoRA pairs and the fully trained tensors, float16) in the format
    `oncoseg.models.mask_prompt.load` reads, atomically."""
    from oncoseg.models import mask_prompt
    from oncoseg.train.lora import adapter_state

    settings = lora_settings()
    lora, tensors = {}, {}
    for key, value in adapter_state(parts).items():
        if ".lora_A." in key or ".lora_B." in key:
            layer, which = key.split(".lora_")[0], key.split(".lora_")[1][0]
            lora.setdefault(layer, {})[which] = value.to(torch.float16)
        else:
            tensors[key] = value.to(torch.float16)
    lora = {layer: (pair["A"], pair["B"]) for layer, pair in lora.items()}
    from oncoseg.models.litemedsam import build_model
    from oncoseg.models.mask_prompt import parts_of

    digest = mask_prompt.base_digest(parts_of(build_model()), set(tensors))
    payload = {"format": mask_prompt.FORMAT, "scale": settings.alpha / settings.r, "lora": lora,
               "dense_level": DENSE_LEVEL,
               "tensors": tensors, "base_digest": digest, "step": step,
               "last": json.dumps(curve[-1] if curve else {})}  # fmt: skip
    with atomic_write_path(out) as temporary:
        torch.save(payload, temporary)
    return out


def export(run: Path, out: Path) -> Path:
    """Write ``run/last.pt``'s adapter as the file `oncoseg.models.mask_prompt.load` reads."""
    saved = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    parts, _, _ = build_parts(saved["adapter"])
    return export_parts(parts, out, saved["step"], saved["curve"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("cache", help="embeddings and truth of one split")
    c.add_argument("--split", default="train", choices=("train", "val"))
    c.add_argument("--limit", type=int, help="cases, evenly spread (default all)")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument(
        "--zoom-out",
        type=float,
        default=1.0,
        help="widen each slice to this many times its size (1: as it is)",
    )
    t = commands.add_parser("train", help="fine-tune (resumes from RUN/last.pt)")
    t.add_argument("--cache", type=Path, required=True)
    t.add_argument("--val-cache", type=Path)
    t.add_argument("--run", type=Path, required=True)
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--save-every", type=int, default=25)
    t.add_argument("--snapshot-every", type=int, default=100)
    t.add_argument(
        "--recipe", choices=sorted(RECIPES), default="v2", help="how neighbour masks are made (v2)"
    )
    t.add_argument("--minutes", type=float, help="stop after this many minutes (resume later)")
    e = commands.add_parser("export", help="write RUN/last.pt's adapter file")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    for sub in (c, t, e):
        sub.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.command == "cache":
            cache_cases(args.split, args.limit, args.out, args.threads, zoom_out=args.zoom_out)
        elif args.command == "train":
            train(args.cache, args.run, args.steps, args.batch, args.lr, args.save_every, args.snapshot_every,
                  args.val_cache, recipe=args.recipe, minutes=args.minutes)  # fmt: skip
        else:
            print(export(args.run, args.out))
    except OncoSegError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

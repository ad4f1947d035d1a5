"""Distil LiteMedSAM's image encoder (the teacher) into the student encoder (`oncoseg.models.student`).

The student is the teacher's own TinyViT run on a 168×168 frame instead of 256×256 (0.43× the pixels, about
2.3× faster on a CPU), its last features resized to the 64×64 grid the unchanged mask decoder reads. Started
from the teacher's weights, every encoder weight is trained to reproduce the teacher's 256×256 embedding (mean
squared error): the decoder, prompts and masks stay the teacher's.

Two resumable steps (run either again after any interruption; it goes on where it stopped)::

    python -m oncoseg.train.distill cache --out runs/distill         # teacher embeddings, ~0.35 s a frame
    python -m oncoseg.train.distill train --out runs/distill --steps 600
    python -m oncoseg.train.distill export --out runs/distill --weights student_encoder.pt
    python -m oncoseg.train.distill plot --out runs/distill --png curve.png

Frames come from the train splits only (Kvasir-SEG, BUSI, MSD hippocampus slices, 3D-IRCADb liver slices with
crops and flips, the TotalSegmentator MR example), prepared as the product prepares them (modality
normalisation, then LiteMedSAM's 256×256 frame); the val splits give the validation frames. Nothing of a test
split is read. The frames and embeddings are kept on disk as float16 arrays (2.4 MB a frame).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from oncoseg.errors import OncoSegError

GRID = 64
EMBEDDING = (256, GRID, GRID)
FRAME = (3, 256, 256)
HIPPOCAMPUS_SLICES = 2  # evenly spaced axial slices per train volume
# a part of the larger train splits (~2 s a frame on a loaded 2-core host: caching every train picture would
# take longer than the training): Kvasir-SEG's first 400 in the split's (hash) order, every other BUSI image
TRAIN_PART = {"kvasir-seg": slice(0, 400), "busi": slice(0, None, 2)}
IRCADB_VIEWS = 8  # the whole slice, then random crops (60-100 % of each side), half of them flipped
MR_SLICES = 16
VAL_FRAMES = 64  # validation frames, evenly spread over the val splits' frames


# -- frames -------------------------------------------------------------------------------------------------
def frame_sources(split: str) -> list[dict]:
    """Where each frame of ``split`` comes from: ``{"dataset", "case", "z", "view"}`` (deterministic order)."""
    from oncoseg.data.adapters import open_dataset

    sources = []
    for name in ("kvasir-seg", "busi", "msd-hippocampus", "ircadb-liver-slices"):
        cases = open_dataset(name).cases(split)
        for case in cases[TRAIN_PART[name]] if split == "train" and name in TRAIN_PART else cases:
            if name == "msd-hippocampus":
                sources += [
                    {"dataset": name, "case": case.case_id, "z": f"{k}/{HIPPOCAMPUS_SLICES}", "view": 0}
                    for k in range(HIPPOCAMPUS_SLICES)
                ]
            elif name == "ircadb-liver-slices":
                views = IRCADB_VIEWS if split == "train" else 1
                sources += [
                    {"dataset": name, "case": case.case_id, "z": None, "view": v} for v in range(views)
                ]
            else:
                sources.append({"dataset": name, "case": case.case_id, "z": None, "view": 0})
    if split != "train":
        keep = np.unique(np.linspace(0, len(sources) - 1, VAL_FRAMES).round().astype(int))
        return [sources[i] for i in keep]
    sources += [
        {"dataset": "totalsegmentator-example", "case": "mr", "z": f"{k}/{MR_SLICES}", "view": 0}
        for k in range(MR_SLICES)
    ]
    return sources


def _slice_index(spec: str, slices: int) -> int:
    k, n = (int(part) for part in spec.split("/"))
    return round((k + 0.5) * slices / n - 0.5)


def _view(pixels: np.ndarray, view: int, rng_seed: str) -> np.ndarray:
    """View 0 is the slice itself; others a random crop of 60-100 % of each side, every other one flipped."""
    if view == 0:
        return pixels
    rng = np.random.default_rng(_seed(rng_seed))
    h, w = pixels.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = pixels[y0 : y0 + ch, x0 : x0 + cw]
    return np.ascontiguousarray(crop[:, ::-1] if view % 2 else crop)


def _seed(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _frames(sources: list[dict], backend) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, [H, W, 3] normalised pixels)`` for each source, each case loaded once."""
    from oncoseg.data.adapters import open_dataset
    from oncoseg.predictor import Predictor

    predictor = Predictor(backend)
    loaded: tuple | None = None
    datasets: dict = {}
    for index, source in enumerate(sources):
        key = (source["dataset"], source["case"])
        if loaded is None or loaded[0] != key:
            if source["dataset"] not in datasets:
                datasets[source["dataset"]] = open_dataset(source["dataset"])
            case = datasets[source["dataset"]].case(source["case"])
            image, _ = case.load()
            predictor.set_image(image, case.modality)
            loaded = (key, image)
        image = loaded[1]
        z = _slice_index(source["z"], image.num_slices) if source["z"] else None
        pixels = predictor.slice_pixels(z)
        yield index, _view(pixels, source["view"], f"{key}/{source['view']}")


# -- cache --------------------------------------------------------------------------------------------------
def _open_arrays(folder: Path, count: int, mode: str) -> tuple[np.memmap, np.memmap]:
    frames = np.lib.format.open_memmap(
        folder / "frames.npy", mode=mode, dtype=np.float16, shape=(count, *FRAME)
    )
    embeddings = np.lib.format.open_memmap(
        folder / "embeddings.npy", mode=mode, dtype=np.float16, shape=(count, *EMBEDDING)
    )
    return frames, embeddings


def cache(out: Path, split: str = "train", limit: int | None = None) -> Path:
    """Write ``out/<split>/``: frames.npy, embeddings.npy (the teacher's, float16), sources.json, and
    done.txt (how many are written: a rerun starts there)."""
    from oncoseg.models.litemedsam import LiteMedSAMBackend

    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    sources = frame_sources(split)[:limit]
    listing = folder / "sources.json"
    if listing.is_file():
        if json.loads(listing.read_text()) != sources:
            raise OncoSegError(f"{folder}: cached for other frames; use another --out")
    else:
        _atomic_text(listing, json.dumps(sources))
    done_file = folder / "done.txt"
    done = int(done_file.read_text()) if done_file.is_file() else 0
    frames, embeddings = _open_arrays(folder, len(sources), "r+" if done else "w+")
    if done >= len(sources):
        return folder
    backend = LiteMedSAMBackend(encoder="teacher")
    began, last_flush = time.monotonic(), time.monotonic()
    for index, pixels in _frames(sources, backend):
        if index < done:
            continue
        frame, _ = backend.preprocess(pixels)
        frames[index] = frame[0].numpy().astype(np.float16)
        embeddings[index] = backend.encode(pixels).features[0].numpy().astype(np.float16)
        done = index + 1
        if time.monotonic() - last_flush > 30 or done == len(sources):
            frames.flush()
            embeddings.flush()
            _atomic_text(done_file, str(done))
            last_flush = time.monotonic()
            rate = (time.monotonic() - began) / max(1, done)
            print(
                f"cache {split}: {done}/{len(sources)} frames, ETA {rate * (len(sources) - done):.0f}s",
                flush=True,
            )
    return folder


def _atomic_text(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


# -- training -----------------------------------------------------------------------------------------------
def student_input(frames: torch.Tensor, size: int) -> torch.Tensor:
    """256×256 frames → the student's ``size``×``size`` input, as at inference."""
    from oncoseg.models.student import shrink

    return shrink(frames, size)


def _trainable(encoder: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Every weight but the attention position biases (window-relative: the window size does not change)."""
    params = []
    for name, param in encoder.named_parameters():
        param.requires_grad = "attention_biases" not in name
        if param.requires_grad:
            params.append(param)
    return params


def _embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student.float(), teacher.float())


def train(
    out: Path,
    steps: int = 600,
    batch_size: int = 8,
    lr: float = 2e-4,
    size: int = 168,
    seed: int = 0,
    checkpoint_minutes: float = 5.0,
    validate_every: int = 50,
) -> Path:
    """Train the student on ``out/train``'s cache; validate on ``out/val``; ``out/last.pt`` every
    ``checkpoint_minutes`` and at the end; ``out/curve.csv`` one row per step (validation where measured)."""
    from oncoseg.models import fast_encoder
    from oncoseg.models.litemedsam import build_model

    train_dir, val_dir = out / "train", out / "val"
    count = _cached_count(train_dir)
    frames, embeddings = _open_arrays(train_dir, count, "r")
    val_count = _cached_count(val_dir) if (val_dir / "done.txt").is_file() else 0
    val = _open_arrays(val_dir, val_count, "r") if val_count else None

    teacher = build_model()
    student = copy.deepcopy(teacher.image_encoder).float().eval()  # BatchNorm statistics stay the teacher's
    del teacher
    params = _trainable(student)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    state_path, curve_path = out / "last.pt", out / "curve.csv"
    step = 0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["settings"] != _settings(size, batch_size, lr, seed, steps):
            raise OncoSegError(f"{state_path} was trained with {state['settings']}: use another --out")
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        _truncate_curve(curve_path, step)  # rows a killed run wrote after its last checkpoint
        print(f"resuming at step {step}", flush=True)
    if step == 0:
        with open(curve_path, "w", newline="") as handle:
            csv.writer(handle).writerow(["step", "epoch", "train_mse", "val_mse", "seconds"])
    per_epoch = count // batch_size
    if per_epoch < 1:
        raise OncoSegError(f"batch size {batch_size} is larger than the {count} cached frames")

    def order(epoch: int) -> np.ndarray:
        return np.random.default_rng(seed + epoch).permutation(count)

    def learning_rate(at: int) -> float:
        warm = min(1.0, (at + 1) / 20)
        return lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, at / steps)))

    last_save, began = time.monotonic(), time.monotonic()
    while step < steps:
        epoch, position = divmod(step, per_epoch)
        batch = np.sort(order(epoch)[position * batch_size : (position + 1) * batch_size])
        x = student_input(torch.from_numpy(frames[batch].astype(np.float32)), size)
        target = torch.from_numpy(embeddings[batch].astype(np.float32))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = fast_encoder.encode(student, x, GRID)
        loss = _embedding_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        val_mse = ""
        if val is not None and (step % validate_every == 0 or step == steps):
            val_mse = f"{validate(student, val, size):.6f}"
        with open(curve_path, "a", newline="") as handle:
            csv.writer(handle).writerow(
                [step, epoch, f"{loss.item():.6f}", val_mse, f"{time.monotonic() - began:.1f}"]
            )
        print(
            f"step {step}/{steps}  mse {loss.item():.5f}  {('val ' + val_mse) if val_mse else ''}", flush=True
        )
        if time.monotonic() - last_save > checkpoint_minutes * 60 or step == steps:
            _save(state_path, student, optimizer, step, _settings(size, batch_size, lr, seed, steps))
            last_save = time.monotonic()
    return state_path


@torch.no_grad()
def validate(
    student: torch.nn.Module, val: tuple[np.memmap, np.memmap], size: int, batch_size: int = 8
) -> float:
    """Mean squared error of the student's embeddings against the teacher's on the validation frames."""
    from oncoseg.models import fast_encoder

    frames, embeddings = val
    total, count = 0.0, len(frames)
    for start in range(0, count, batch_size):
        x = student_input(torch.from_numpy(frames[start : start + batch_size].astype(np.float32)), size)
        target = torch.from_numpy(embeddings[start : start + batch_size].astype(np.float32))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = fast_encoder.encode(student, x, GRID)
        total += _embedding_loss(prediction, target).item() * len(x)
    return total / count


def _settings(size: int, batch_size: int, lr: float, seed: int, steps: int) -> dict:
    return {"size": size, "batch_size": batch_size, "lr": lr, "seed": seed, "steps": steps}


def _save(path: Path, student, optimizer, step: int, settings: dict) -> None:
    part = path.with_name(path.name + ".part")
    torch.save(
        {
            "student": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "settings": settings,
        },
        part,
    )
    os.replace(part, path)


def _truncate_curve(path: Path, step: int) -> None:
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= step]
    part = path.with_name(path.name + ".part")
    with open(part, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)
    os.replace(part, path)


def _cached_count(folder: Path) -> int:
    sources = json.loads((folder / "sources.json").read_text())
    done = int((folder / "done.txt").read_text()) if (folder / "done.txt").is_file() else 0
    if done < len(sources):
        raise OncoSegError(f"{folder}: {done} of {len(sources)} frames cached; run the cache step again")
    return len(sources)


def export(out: Path, weights: Path) -> Path:
    """The trained student's encoder weights as a float16 state dict (what `oncoseg.models.student` loads)."""
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    tensors = {
        name: (value.half() if value.is_floating_point() else value)
        for name, value in state["student"].items()
    }
    payload = {"size": state["settings"]["size"], "step": state["step"], "encoder": tensors}
    weights.parent.mkdir(parents=True, exist_ok=True)
    part = weights.with_name(weights.name + ".part")
    torch.save(payload, part)
    os.replace(part, weights)
    return weights


def plot_curve(out: Path, png: Path) -> Path:
    """The training curve (train MSE, its 20-step mean, validation MSE) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "curve.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = np.array([int(row["step"]) for row in rows])
    train_mse = np.array([float(row["train_mse"]) for row in rows])
    validated = [(int(row["step"]), float(row["val_mse"])) for row in rows if row["val_mse"]]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    axis.plot(steps, train_mse, color="0.75", linewidth=0.8, label="train MSE (each batch)")
    window = min(20, len(train_mse))
    smooth = np.convolve(train_mse, np.ones(window) / window, mode="valid")
    axis.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"train MSE ({window}-step mean)")
    if validated:
        axis.plot(
            *zip(*validated, strict=True), "o-", color="tab:red", label="validation MSE (64 val frames)"
        )
    axis.set_xlabel("optimiser step (batch 8)")
    axis.set_ylabel("embedding MSE vs the teacher")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title("Student encoder distillation (168×168 frame)")
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    part = png.with_name(png.stem + ".part.png")
    figure.savefig(part)
    plt.close(figure)
    os.replace(part, png)
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oncoseg.train.distill", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("step", choices=("cache", "train", "export", "plot"))
    parser.add_argument("--out", type=Path, required=True, help="the run's folder (cache, checkpoint, curve)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--size", type=int, default=168, help="the student's input frame (pixels a side)")
    parser.add_argument("--limit", type=int, help="cache: at most this many frames per split")
    parser.add_argument(
        "--checkpoint-minutes", type=float, default=5.0, help="train: save last.pt this often (0: every step)"
    )
    parser.add_argument("--weights", type=Path, help="export: where to write the float16 weights")
    parser.add_argument("--png", type=Path, help="plot: where to write the training curve")
    args = parser.parse_args(argv)
    try:
        if args.step == "cache":
            for split in ("val", "train"):
                print(cache(args.out, split, args.limit))
        elif args.step == "train":
            print(
                train(args.out, args.steps, args.batch_size, args.lr, args.size,
                      checkpoint_minutes=args.checkpoint_minutes)
            )  # fmt: skip
        elif args.step == "plot":
            if args.png is None:
                parser.error("plot needs --png")
            print(plot_curve(args.out, args.png))
        else:
            if args.weights is None:
                parser.error("export needs --weights")
            print(export(args.out, args.weights))
    except OncoSegError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput and peak memory: LoRA (r=16 on the encoder's attention + the mask decoder) against full
fine-tuning of LiteMedSAM, on real MSD Hippocampus training samples, with the same loop as ``oncoseg train``
(box-prompted forward, modality-weighted Dice + Focal loss, AdamW, bf16 autocast where the CPU has it).

Each mode runs in its own process so that its peak memory (max RSS) is its own. Writes
``benchmarks/results/train_speed.json`` and prints a Markdown table.
Run: ``python benchmarks/train_speed.py [--steps 4] [--batch 4]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import DEFAULT_DATA, DEFAULT_OUT, environment, markdown_table, require_data, write_json

MODES = ("lora", "full")


def measure(mode: str, steps: int, batch: int, data: Path) -> dict[str, Any]:
    """Seconds per optimizer step (after one warm-up step) and this process's peak RSS."""
    import torch
    from torch.utils.data import DataLoader

    from oncoseg.data import open_dataset
    from oncoseg.models.litemedsam import build_model, cpu_has_bf16
    from oncoseg.train.lora import LoraSettings, apply_lora, parameter_counts
    from oncoseg.train.losses import ModalityLoss
    from oncoseg.train.module import box_forward
    from oncoseg.train.samples import SampleSettings, TrainingSamples, collate_samples

    model = build_model()
    if mode == "lora":
        apply_lora(model, LoraSettings())
    model.train()
    counts = parameter_counts(model)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05
    )
    loss_function = ModalityLoss()
    cases = open_dataset("msd-hippocampus", data).cases("train")[:8]
    samples = TrainingSamples(cases, SampleSettings(), samples_per_epoch=batch * (steps + 1))
    loader = DataLoader(samples, batch_size=batch, collate_fn=collate_samples)
    bf16 = cpu_has_bf16()
    seconds = []
    for batch_data in loader:
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = box_forward(model, batch_data["image"], batch_data["box"])
        loss = loss_function(logits.float(), batch_data["mask"], batch_data["modality"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - began)
    timed = sorted(seconds[1:])  # the first step warms up
    median = timed[len(timed) // 2]
    return {
        "mode": mode,
        "trainable": counts["trainable"],
        "total": counts["total"],
        "steps_timed": len(timed),
        "batch": batch,
        "median_step_s": median,
        "images_per_s": batch / median,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bf16_autocast": bf16,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=4, help="timed optimizer steps per mode (after 1 warm-up)"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--one", choices=MODES, help=argparse.SUPPRESS
    )  # internal: measure one mode, print JSON
    args = parser.parse_args(argv)
    data = require_data(args.data)
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.batch, data)))
        return {}
    runs = {}
    for mode in MODES:
        command = [sys.executable, __file__, "--one", mode, "--steps", str(args.steps), "--batch", str(args.batch),
                   "--data", str(data)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, encoding="utf-8", check=False)
        if done.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{done.stderr[-2000:]}")
        runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    result = {
        "benchmark": "train_speed",
        "environment": environment(),
        "runs": runs,
        "speedup_lora_vs_full": runs["full"]["median_step_s"] / runs["lora"]["median_step_s"],
        "memory_ratio_lora_vs_full": runs["lora"]["peak_rss_mb"] / runs["full"]["peak_rss_mb"],
    }
    path = write_json(result, args.out, "train_speed")
    rows = [
        (mode, f"{r['trainable'] / 1e6:.2f} M of {r['total'] / 1e6:.2f} M", f"{r['median_step_s']:.1f} s",
         f"{r['images_per_s']:.2f}", f"{r['peak_rss_mb']:.0f} MB")
        for mode, r in runs.items()
    ]  # fmt: skip
    print(markdown_table(("mode", "trainable", f"step (batch {args.batch})", "images/s", "peak RSS"), rows))
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()

"""Proof that fine-tuning learns: test-split Dice before and after LoRA fine-tuning, and a forgetting check.

1. zero-shot: ``oncoseg evaluate`` on the MSD Hippocampus test split, per slice (a ground-truth box on every
   slice) and propagated (a ground-truth box on the largest slice, walked through the volume), with LiteMedSAM's
   own encoder (the one the adapter is trained on; its walk goes from the box alone), and the default model's
   walk (student encoder, following the neighbour's mask) for reference
2. ``oncoseg train configs/finetune-hippocampus.yaml`` (LoRA r=16 on the encoder's attention + the mask decoder,
   trained on the train split only; resumable)
3. the same evaluations with the trained adapter (``--checkpoint``): the test volumes were never trained on; a
   fine-tuned model walks from the box alone (the shipped mask-prompt decoder fits the student encoder only)
4. forgetting: Kvasir-SEG test (100 images, ground-truth boxes) with and without the adapter

An adapter that gains per slice but loses propagated (3D) Dice against the default walk is no default: the
table says which way each went.

Writes ``benchmarks/results/finetune.json`` and prints a Markdown table.
Run: ``python benchmarks/finetune.py [--config configs/finetune-hippocampus.yaml] [--limit 26]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import DEFAULT_DATA, DEFAULT_OUT, REPO, environment, markdown_table, require_data, write_json

from oncoseg.evaluate.runner import evaluate
from oncoseg.train.phases import load_config, phase_folder, train

TARGET_GAIN = 0.05
FORGETTING_LIMIT = 0.01


def main_dice(summary: dict[str, Any], mode: str) -> dict[str, float]:
    """Mean Dice per target (category "all") for one mode."""
    return {
        group["target"]: group["dice"]["mean"]
        for group in summary["groups"]
        if group["mode"] == mode and group["category"] == "all" and group["dice"]["n"]
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "finetune-hippocampus.yaml")
    parser.add_argument(
        "--limit", type=int, default=13, help="test volumes (evenly spread; default 13 of 52)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    data = require_data(args.data)
    config = load_config(args.config)
    config.data_root = str(data)
    phase = config.phases[-1]
    dataset = phase.datasets[0]
    runs = args.out / "eval" / "finetune"

    def scored(name: str, folder: str, checkpoint: str | None, **options: Any) -> dict[str, Any]:
        return evaluate(
            name, runs / folder, "test", "box", checkpoint=checkpoint, data_root=str(data), **options
        )

    modes = ("per_slice", "propagate")
    before = scored(dataset, f"{dataset}-before", None, modes=modes, limit=args.limit, encoder="teacher")
    default = scored(dataset, f"{dataset}-default", None, modes=("propagate",), limit=args.limit)
    began = time.perf_counter()
    records = train(config)
    train_seconds = time.perf_counter() - began
    adapter = str(phase_folder(config, len(config.phases) - 1) / "adapter.safetensors")
    after = scored(dataset, f"{dataset}-after", adapter, modes=modes, limit=args.limit)
    kvasir_before = scored("kvasir-seg", "kvasir-before", None)
    kvasir_after = scored("kvasir-seg", "kvasir-after", adapter)

    d_before, d_after = main_dice(before, "per_slice"), main_dice(after, "per_slice")
    p_before, p_after = main_dice(before, "propagate"), main_dice(after, "propagate")
    p_default = main_dice(default, "propagate")
    k_before, k_after = main_dice(kvasir_before, "2d"), main_dice(kvasir_after, "2d")
    gains = {target: d_after[target] - d_before[target] for target in d_before}
    propagate_gains = {target: p_after[target] - p_before[target] for target in p_before}
    against_default = {target: p_after[target] - p_default[target] for target in p_default}
    mean_gain = sum(gains.values()) / len(gains)
    forgetting = k_before["polyp"] - k_after["polyp"]
    record = records[-1]
    samples_seen = record.get("samples_per_epoch", 0) * record.get("epochs_run", 0)
    result = {
        "benchmark": "finetune",
        "environment": environment(),
        "config": json.loads(json.dumps(config, default=lambda o: o.__dict__)),
        "dataset": dataset,
        "test_cases": args.limit,
        "before": d_before,
        "after": d_after,
        "gain": gains,
        "mean_gain": mean_gain,
        "propagate_before": p_before,  # teacher encoder, walked from the box alone
        "propagate_after": p_after,  # the adapter (teacher + LoRA), walked from the box alone
        "propagate_default": p_default,  # the default model: student encoder, the walk follows the mask
        "propagate_gain": propagate_gains,
        "propagate_against_default": against_default,
        "loses_3d_against_default": any(v < 0 for v in against_default.values()),
        "target_gain": TARGET_GAIN,
        "meets_gain": mean_gain >= TARGET_GAIN,
        "kvasir_before": k_before["polyp"],
        "kvasir_after": k_after["polyp"],
        "forgetting": forgetting,
        "forgetting_limit": FORGETTING_LIMIT,
        "meets_forgetting": forgetting <= FORGETTING_LIMIT,
        "train_seconds": round(train_seconds, 1),
        "train_record": record,
        "samples_per_second": round(samples_seen / record["seconds"], 3) if record.get("seconds") else None,
    }
    path = write_json(result, args.out, "finetune")
    rows = [(f"{dataset} {t} (per-slice GT box)", f"{d_before[t]:.3f}", f"{d_after[t]:.3f}", f"{gains[t]:+.3f}")
            for t in d_before]  # fmt: skip
    rows += [(f"{dataset} {t} (GT box on the largest slice, propagated)", f"{p_before[t]:.3f}",
              f"{p_after[t]:.3f}", f"{propagate_gains[t]:+.3f} (default walk {p_default[t]:.3f})")
             for t in p_before]  # fmt: skip
    rows.append(("Kvasir-SEG test (forgetting check)", f"{k_before['polyp']:.3f}", f"{k_after['polyp']:.3f}",
                 f"{-forgetting:+.3f}"))  # fmt: skip
    print(markdown_table(("test set", "zero-shot Dice", "fine-tuned Dice", "change"), rows))
    print(f"\ntraining: {train_seconds / 60:.1f} min; wrote {path}")
    return result


if __name__ == "__main__":
    main()

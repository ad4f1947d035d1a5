"""The cost of the mask-prompt decoder in 3D: `speed.py`'s propagation (the liver of the TotalSegmentator example
CT, from one GT box; the volume re-encoded every run) timed with the default `PropagationSettings` and with the
box-only walk (``mask_prompt=False``), alternating in one process so both see the same host load.

    nice -n 19 .venv/bin/python benchmarks/propagation_speed.py --threads 1 --repeats 3

Prints the medians and the slices walked; no JSON (speed.py's table is the product's number).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import DEFAULT_DATA
from speed import liver_volume

from oncoseg.models.litemedsam import LiteMedSAMBackend
from oncoseg.predictor import Predictor
from oncoseg.prompts import Prompt, box_from_mask
from oncoseg.volume import PropagationSettings, propagate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slices", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volume, truth = liver_volume(DEFAULT_DATA, args.slices)
    predictor = Predictor(LiteMedSAMBackend(), cache_slices=max(64, volume.num_slices))
    start = int(np.argmax(truth.sum(axis=(1, 2))))
    prompt = Prompt(box=box_from_mask(truth[start], z=start))
    variants = {
        "default (mask prompt)": PropagationSettings(),
        "box only": PropagationSettings(mask_prompt=False),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    walked: dict[str, int] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name, settings in variants.items():
            visited: set[int] = set()
            began = time.perf_counter()
            predictor.set_image(volume, "ct")
            propagate(predictor, prompt, settings, on_slice=visited.add)
            if repeat:
                times[name].append(time.perf_counter() - began)
            walked[name] = len(visited)
    for name, values in times.items():
        print(
            f"{name}: median {np.median(values):.2f} s over {len(values)} runs, {walked[name]} slices walked"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

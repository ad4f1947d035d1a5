"""What keeping freed memory in glibc's malloc (``oncoseg.models.litemedsam.keep_freed_memory``) does to the
LiteMedSAM encoder on this CPU: the same images encoded in child processes with the tuning off
(``ONCOSEG_MALLOC_TUNING=0``) and on, alternating, so both see the same machine load.

    .venv/bin/python benchmarks/malloc_tuning.py            # → benchmarks/results/malloc_tuning.json

Per setting: encoder wall time per image (``backend.encode``: resize/pad + image encoder, 2 threads, after 3
warm-up calls) and minor page faults per encode (``getrusage``), on slices of the example CT (512×512) and
Kvasir-SEG test images; and the service's model work without HTTP (``Engine.segment`` on its model thread, as
``oncoseg serve`` runs it, answering with the PNG overlay and no polygons like the web page): a first click on
each of the CT's 20 slices and 3 refining clicks after each. Prints a Markdown table; the ratio on/off is the
number to read on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "malloc_tuning.json"

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from oncoseg.data import open_dataset
from oncoseg.io import load_image
from oncoseg.predictor import normalise_image
torch.set_num_threads(2)
# all torch work on the service's model thread, the backend's construction included (one OpenMP pool)
from oncoseg.service.core import Engine, ServiceConfig
engine = Engine(ServiceConfig())
backend = engine.backend
ct = load_image(sys.argv[1] + "/totalsegmentator-example/example_ct_dicom")
images = [normalise_image(ct, "ct")[z] for z in range(0, ct.num_slices, 4)]
for case in open_dataset("kvasir-seg", sys.argv[1]).cases("test")[:5]:
    image, _ = case.load()
    images.append(normalise_image(image, "endoscopy"))
images = [np.repeat(i[..., None], 3, axis=-1) if i.ndim == 2 else i for i in images]
def timed_encodes():
    for image in images[:3]:
        backend.encode(image)
    times, faults = [], []
    for image in images:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        backend.encode(image)
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return times, faults
times, faults = engine.worker.call(timed_encodes)
# the service's model work on the same CT: a first click on each slice, then 3 refining clicks (no HTTP)
import random
from oncoseg.prompts import Point, Prompt
session = engine.new_session(ct, None, "benchmark")
rng = random.Random(0)
first, later = [], []
def click(z, clicks):
    answer = engine.worker.call(lambda: engine.segment(session, Prompt(points=tuple(clicks)), z, True, False))
    return answer["compute_ms"]
for z in range(ct.num_slices):
    clicks = [Point(256, 256, True)]
    first.append(click(z, clicks))
    for _ in range(3):
        clicks.append(Point(256 + rng.randint(-40, 40), 256 + rng.randint(-40, 40), rng.random() > 1 / 3))
        later.append(click(z, clicks))
engine.close()
print(json.dumps({"seconds": times, "faults": faults, "first_click_ms": first, "later_click_ms": later}))
"""


def run_child(data: Path, tuning: bool) -> dict:
    env = {**os.environ, "ONCOSEG_MALLOC_TUNING": "1" if tuning else "0"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(data)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=3, help="child processes per setting (alternating)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    keys = ("seconds", "faults", "first_click_ms", "later_click_ms")
    runs: dict[str, dict[str, list]] = {name: {key: [] for key in keys} for name in ("off", "on")}
    for round_ in range(args.rounds):
        for name in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
            child = run_child(args.data, name == "on")
            for key in keys:
                runs[name][key] += child[key]
    summary = {
        name: {
            "n": len(r["seconds"]),
            "encode_ms_p50": round(1000 * float(np.median(r["seconds"])), 1),
            "encode_ms_p90": round(1000 * float(np.percentile(r["seconds"], 90)), 1),
            "page_faults_per_encode": int(np.median(r["faults"])),
            "first_click_ms_p50": round(float(np.median(r["first_click_ms"])), 1),
            "first_click_ms_p95": round(float(np.percentile(r["first_click_ms"], 95)), 1),
            "later_click_ms_p50": round(float(np.median(r["later_click_ms"])), 1),
            "later_click_ms_p95": round(float(np.percentile(r["later_click_ms"], 95)), 1),
        }
        for name, r in runs.items()
    }
    summary["ratio_p50_on_off"] = round(summary["on"]["encode_ms_p50"] / summary["off"]["encode_ms_p50"], 3)
    print(
        "| malloc tuning | encodes | p50 ms | p90 ms | faults per encode | first click p50/p95 | later p50/p95 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ("off", "on"):
        s = summary[name]
        print(
            f"| {name} | {s['n']} | {s['encode_ms_p50']} | {s['encode_ms_p90']} | {s['page_faults_per_encode']} | "
            f"{s['first_click_ms_p50']} / {s['first_click_ms_p95']} | "
            f"{s['later_click_ms_p50']} / {s['later_click_ms_p95']} |"
        )
    print(f"ratio on/off (p50): {summary['ratio_p50_on_off']}")
    document = {
        "benchmark": "malloc_tuning",
        "command": "python benchmarks/malloc_tuning.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpus": os.cpu_count(),
        "load_avg_1m_before": load_before,
        **summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

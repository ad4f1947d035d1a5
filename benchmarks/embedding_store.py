"""What the on-disk embedding store (`oncoseg.embedding_store`) saves: the time to get every slice's embedding of a
CT volume on a second run (a new `Predictor`, as a second CLI run, the service or napari would make), with the
store and without it.

For each volume, with LiteMedSAM (``--precision``, default auto):

  no store                  ``Predictor(embedding_store=False)``: every slice encoded, on every run
  store, run 1 (cold)       an empty store folder: every slice encoded and written
  store, run 2 (warm)       a new predictor on the same folder: every slice read from disk

Each figure is the median over ``--repeats`` runs of ``set_image`` + ``embedding(z)`` for every slice (the
store's weight digest, computed once per backend, is reported apart). Warm-run embeddings are checked to be
bit-identical to fresh ones. Volume: the bundled 30-slice abdominal CT (``oncoseg.samples``); ``--example`` adds
the TotalSegmentator example CT from ``../shared/data`` (the same 30 × 101 × 122 scan in its original file).

Writes ``benchmarks/results/embedding_store.json`` and prints a Markdown table.
Run: ``PYTHONPATH=src python benchmarks/embedding_store.py [--repeats N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_DATA, DEFAULT_OUT, environment, markdown_table, write_json

from oncoseg.embedding_store import EmbeddingStore
from oncoseg.io import load_image
from oncoseg.models.litemedsam import LiteMedSAMBackend
from oncoseg.predictor import Predictor
from oncoseg.samples import sample_path


def volumes(data: Path, example: bool) -> list[tuple[str, Path]]:
    found = [("bundled CT sample (ct_abdomen)", sample_path("ct_abdomen"))]
    path = data / "totalsegmentator-example" / "example_ct_sm.nii.gz"
    if example and path.is_file():
        found.append(("TotalSegmentator example CT", path))
    return found


def encode_all(predictor: Predictor, image) -> tuple[float, list]:
    """Seconds for ``set_image`` and every slice's embedding; the embeddings' features."""
    began = time.perf_counter()
    predictor.set_image(image, modality="ct")
    features = [predictor.embedding(z).features for z in range(image.num_slices)]
    return time.perf_counter() - began, features


def run(backend: LiteMedSAMBackend, image, repeats: int) -> dict:
    slices = image.num_slices
    cache = slices + 1
    plain, fresh = [], None
    for _ in range(repeats):
        seconds, features = encode_all(Predictor(backend, cache, embedding_store=False), image)
        plain.append(seconds)
        fresh = fresh if fresh is not None else features
    print(f"no store: {[round(s, 2) for s in plain]} s", file=sys.stderr, flush=True)
    cold, warm, identical, store_bytes = [], [], True, 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="oncoseg-store-") as folder:
            store = EmbeddingStore(folder)
            seconds, _ = encode_all(Predictor(backend, cache, embedding_store=store), image)
            cold.append(seconds)
            reader = EmbeddingStore(folder)
            seconds, features = encode_all(Predictor(backend, cache, embedding_store=reader), image)
            warm.append(seconds)
            print(f"store: cold {cold[-1]:.2f} s, warm {seconds:.2f} s", file=sys.stderr, flush=True)
            assert reader.hits == slices and reader.writes == 0, (reader.hits, reader.writes)
            identical &= all(torch.equal(a, b) for a, b in zip(fresh, features, strict=True))
            store_bytes = store.nbytes
    median = statistics.median
    return {
        "slices": slices,
        "slice_shape": list(image.shape[1:]),
        "no_store_s": round(median(plain), 3),
        "no_store_runs_s": [round(s, 3) for s in plain],
        "store_cold_s": round(median(cold), 3),
        "store_warm_s": round(median(warm), 3),
        "store_cold_runs_s": [round(s, 3) for s in cold],
        "store_warm_runs_s": [round(s, 3) for s in warm],
        "speedup_second_run": round(median(plain) / median(warm), 1),
        "cold_overhead_s": round(median(cold) - median(plain), 3),
        "store_mb": round(store_bytes / 2**20, 1),
        "warm_identical_to_fresh": bool(identical),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--example", action="store_true", help="also the TotalSegmentator example CT")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = LiteMedSAMBackend(precision=args.precision)
    began = time.perf_counter()
    backend.embedding_identity()
    digest_s = time.perf_counter() - began
    rows, results = [], {}
    for name, path in volumes(args.data, args.example):
        image = load_image(path, modality="ct")
        backend.encode(np.zeros((64, 64, 3), np.float32))  # warm-up
        result = run(backend, image, args.repeats)
        results[name] = result
        rows.append(
            [name, f"{result['slices']} × {result['slice_shape'][0]}×{result['slice_shape'][1]}",
             result["no_store_s"], result["store_cold_s"], result["store_warm_s"],
             f"{result['speedup_second_run']}×", result["store_mb"], result["warm_identical_to_fresh"]]
        )  # fmt: skip
    header = ["volume", "slices", "no store, any run (s)", "store, 1st run (s)", "store, 2nd run (s)",
              "2nd run speed-up", "store (MB)", "identical"]  # fmt: skip
    print(markdown_table(header, rows))
    print(
        f"\nweight digest for the store key (once per backend): {digest_s:.3f} s; precision {backend.precision}"
    )
    out = write_json(
        {
            "benchmark": "embedding_store",
            "backend": backend.describe(),
            "repeats": args.repeats,
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
            "weight_digest_s": round(digest_s, 3),
            "volumes": results,
            "environment": environment(),
        },
        args.out,
        "embedding_store",
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""End-to-end evaluation time: ``oncoseg evaluate kvasir-seg`` over the 100 test images, started as a user would
(a fresh process, model loading, reading, prompting, scoring, writing the tables), target ≤ 3 minutes on 2 cores.
Optionally also with ``--devices 2`` (two Lightning DDP processes sharing the same cores).

Writes ``benchmarks/results/scale.json`` and prints a Markdown table.
Run: ``python benchmarks/scale.py [--ddp]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import DEFAULT_DATA, DEFAULT_OUT, environment, markdown_table, require_data, write_json

TARGET_S = 180.0


def run(arguments: list[str], out: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "oncoseg.cli",
        "evaluate",
        *arguments,
        "-o",
        str(out),
        "-q",
        "--no-report",
    ]
    began = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, encoding="utf-8", check=False)
    seconds = time.perf_counter() - began
    if finished.returncode != 0:
        raise SystemExit(f"oncoseg evaluate failed:\n{finished.stderr[-2000:]}")
    rows = (out / "cases.csv").read_text(encoding="utf-8").strip().splitlines()[1:]
    return {"command": " ".join(["oncoseg", *command[3:]]), "seconds": round(seconds, 1), "cases": len(rows)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ddp", action="store_true", help="also time --devices 2")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    data = require_data(args.data)
    base = ["kvasir-seg", "--split", "test", "--data", str(data)]
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        runs["1 process"] = run(base, Path(scratch) / "one")
        if args.ddp:
            runs["2 DDP processes"] = run([*base, "--devices", "2"], Path(scratch) / "two")
    for entry in runs.values():
        entry["meets_target"] = entry["seconds"] <= TARGET_S
        entry["seconds_per_case"] = round(entry["seconds"] / max(1, entry["cases"]), 3)
    result = {"benchmark": "scale", "environment": environment(), "target_s": TARGET_S, "runs": runs}
    path = write_json(result, args.out, "scale")
    rows = [
        (
            name,
            e["cases"],
            f"{e['seconds']:.1f} s",
            f"{e['seconds_per_case']:.2f} s",
            "yes" if e["meets_target"] else "no",
        )
        for name, e in runs.items()
    ]
    print(markdown_table(("run", "cases", "wall clock", "per case", f"≤ {TARGET_S:.0f} s"), rows))
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()

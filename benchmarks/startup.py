"""Cold start-up of the command line and the service, as a user meets them (issue 22 item 3).

Each run is a fresh process (the OS file cache and bytecode caches warm: one untimed run first):
  import_cli       ``python -c "import oncoseg.cli"``
  segment          ``oncoseg segment <bundled polyp.jpg> --box 148,160,424,416 -o tmp.png --threads 1 -q``, run as
                   ``python -c WRAPPER ...`` (the console script's ``main``), end to end
  first_embedding  from that process's start until the first image embedding returns (the wrapper's meta-path hook
                   wraps ``LiteMedSAMBackend.encode`` when its module is imported; it imports nothing itself)
  serve_health     ``oncoseg serve --port <free> --threads 1`` until ``GET /health`` answers 200 (polled every 20 ms),
                   then stopped by its PID
  import torch     ``python -c "import torch"``: the floor every model run pays. The host is shared and noisy, so
                   every row is also given as a ratio to it, measured in the same rounds
With ``--baseline DIR`` (e.g. an older commit's src unpacked by ``git archive``) both are timed in the same rounds,
interleaved. Then one run each under ``-X importtime`` gives the top import-time entries.

Writes ``benchmarks/results/startup.json`` and prints Markdown tables. Run (OMP_NUM_THREADS=1 for every child):
``.venv/bin/python benchmarks/startup.py --runs 5 [--baseline /tmp/before/src --baseline-no-threads-option]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLYP = REPO / "src" / "oncoseg" / "samples" / "polyp.jpg"
BOX = "148,160,424,416"
HEAVY = (
    "timm",
    "torchvision",
    "monai",
    "pydicom",
    "SimpleITK",
    "fastapi",
    "scipy",
    "nibabel",
    "transformers",
)

# Runs the real CLI; prints when the first image embedding is returned. The hook patches the backend class when
# its module is first imported, so the wrapper changes neither what is imported nor when.
WRAPPER = r"""
import importlib.abc, importlib.util, sys, time

class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "oncoseg.models.litemedsam":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            encode = module.LiteMedSAMBackend.encode
            def timed(self, *args, **kwargs):
                out = encode(self, *args, **kwargs)
                print(f"STARTUP_FIRST_EMBEDDING {time.time():.6f}", file=sys.stderr, flush=True)
                return out
            module.LiteMedSAMBackend.encode = timed
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Hook())
sys.argv = ["oncoseg", *sys.argv[1:]]
from oncoseg.cli import main
sys.exit(main())
"""


def child_env(src: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)
    return env


def timed_run(
    command: list[str], env: dict[str, str], cwd: Path
) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return elapsed, done


def import_table(stderr: str, top: int = 15) -> tuple[list[dict], set[str]]:
    """The ``-X importtime`` lines as rows, biggest cumulative first (top-level and nested alike)."""
    rows = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append({"module": match[4], "self_ms": int(match[1]) / 1000, "cumulative_ms": int(match[2]) / 1000,
                         "depth": len(match[3]) // 2})  # fmt: skip
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:top], {r["module"] for r in rows}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_ready(python: str, env: dict[str, str], cwd: Path, timeout: float = 180.0) -> float:
    """Seconds from starting ``oncoseg serve`` until GET /health answers 200; the server is stopped by its PID."""
    port = free_port()
    command = [python, "-m", "oncoseg.cli", "serve", "--port", str(port), "--threads", "1"]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.perf_counter() - start < timeout:
            if process.poll() is not None:
                sys.exit(
                    f"oncoseg serve exited ({process.returncode}): {process.stderr.read().decode()[-400:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                pass
            time.sleep(0.02)
        sys.exit(f"oncoseg serve did not answer /health within {timeout:.0f} s")
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        process.stderr.close()


def summary(values: list[float]) -> dict:
    return {"n": len(values), "median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
            "max_s": round(max(values), 3), "all_s": [round(v, 3) for v in values]}  # fmt: skip


def load_average() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def measure_variant(name: str, src: Path, threads: list[str], work: Path, serve: bool, times: dict) -> None:
    """One round of the CLI import, the segment run and (optionally) the service, for the code in ``src``."""
    python, env = sys.executable, child_env(src)
    elapsed, _ = timed_run([python, "-c", "import oncoseg.cli"], env, work)
    times["import_cli"].append(elapsed)
    elapsed, first = segment_run(src, threads, work)
    times["segment"].append(elapsed)
    if first is not None:
        times["first_embedding"].append(first)
    if serve:
        times["serve_health"].append(serve_ready(python, env, work))


def segment_command(threads: list[str], work: Path) -> list[str]:
    return [sys.executable, "-c", WRAPPER, "segment", str(POLYP), "--box", BOX, "-o", str(work / "tmp.png"),
            *threads, "-q"]  # fmt: skip


def segment_run(src: Path, threads: list[str], work: Path) -> tuple[float, float | None]:
    """Wall seconds of the segment command and seconds from its start to the first embedding."""
    start = time.time()
    elapsed, done = timed_run(segment_command(threads, work), child_env(src), work)
    stamp = re.search(r"STARTUP_FIRST_EMBEDDING (\S+)", done.stderr)
    return elapsed, (float(stamp[1]) - start if stamp else None)


def import_report(src: Path, threads: list[str], work: Path) -> dict:
    """``-X importtime`` of ``import oncoseg.cli`` and of the segment run: top entries and heavy modules."""
    python, env = sys.executable, child_env(src)
    _, cli = timed_run([python, "-X", "importtime", "-c", "import oncoseg.cli"], env, work)
    _, seg = timed_run([python, "-X", "importtime", *segment_command(threads, work)[1:]], env, work)
    report = {}
    for title, stderr in (("import oncoseg.cli", cli.stderr), ("oncoseg segment polyp.jpg", seg.stderr)):
        top, modules = import_table(stderr)
        report[title] = {"top15": top, "heavy_modules": sorted(m for m in HEAVY if m in modules)}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="repeats of each measurement (default 5)")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout's src folder, timed in the same rounds"
    )
    parser.add_argument("--baseline-no-threads-option", action="store_true",
                        help="the baseline's segment has no --threads (OMP_NUM_THREADS=1 is set anyway)")  # fmt: skip
    parser.add_argument("--no-serve", action="store_true", help="skip the service measurement")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args()
    variants = {"current": (REPO / "src", ["--threads", "1"])}
    if args.baseline:
        variants["baseline"] = (
            args.baseline.resolve(),
            [] if args.baseline_no_threads_option else ["--threads", "1"],
        )
    work = Path(tempfile.mkdtemp(prefix="oncoseg-startup-"))
    load_before = load_average()
    for src, threads in variants.values():  # warm-up, untimed: bytecode caches written, files in the OS cache
        segment_run(src, threads, work)

    floor: list[float] = []
    times = {name: {key: [] for key in ("import_cli", "segment", "first_embedding", "serve_health")}
             for name in variants}  # fmt: skip
    for _ in range(args.runs):  # interleaved, so a change of load hits every row alike
        floor.append(timed_run([sys.executable, "-c", "import torch"], child_env(REPO / "src"), work)[0])
        for name, (src, threads) in variants.items():
            measure_variant(name, src, threads, work, not args.no_serve, times[name])
    imports = {name: import_report(src, threads, work) for name, (src, threads) in variants.items()}
    load_after = load_average()

    reference = statistics.median(floor)
    result = {
        "command": f"{Path(sys.executable).name} benchmarks/startup.py --runs {args.runs}"
        + (f" --baseline {args.baseline}" if args.baseline else "")
        + (" --baseline-no-threads-option" if args.baseline_no_threads_option else ""),
        "what": __doc__.split("\n\n")[1].strip(),
        "python": platform.python_version(),
        "logical_cpus": os.cpu_count(),
        "load_average_before_after": [load_before, load_after],
        "import_torch_floor": summary(floor),
        "variants": {
            name: {
                "src": str(variants[name][0]),
                "times": {key: summary(v) for key, v in rows.items() if v},
                "ratio_to_import_torch": {
                    key: round(statistics.median(v) / reference, 2) for key, v in rows.items() if v
                },
                "imports": imports[name],
            }
            for name, rows in times.items()
        },
    }
    print(f"## Start-up: {args.runs} rounds, load average {load_before} -> {load_after}\n")
    print("| variant | measurement | median s | min s | max s | × import torch |\n|---|---|---|---|---|---|")
    print(f"| | import torch (floor) | {reference:.2f} | {min(floor):.2f} | {max(floor):.2f} | 1.00 |")
    for name, variant in result["variants"].items():
        for key, s in variant["times"].items():
            print(f"| {name} | {key} | {s['median_s']:.2f} | {s['min_s']:.2f} | {s['max_s']:.2f} | "
                  f"{variant['ratio_to_import_torch'][key]:.2f} |")  # fmt: skip
    for name, variant in result["variants"].items():
        for title, report in variant["imports"].items():
            print(f"\n### {name}: -X importtime top 15 (cumulative ms, self ms), {title}\n")
            print("| module | cumulative ms | self ms |\n|---|---|---|")
            for row in report["top15"]:
                print(
                    f"| {'. ' * row['depth']}{row['module']} | {row['cumulative_ms']:.0f} | {row['self_ms']:.0f} |"
                )
            print(f"\nheavy modules imported: {', '.join(report['heavy_modules']) or 'none'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

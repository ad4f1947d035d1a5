"""Cold start-up of the command line and the service, as a user meets them (issue 22 item 3).

Each run is a fresh process (nothing cached in memory but the OS's file cache):
  import_cli     ``python -X importtime -c "import oncoseg.cli"``: wall time and the import-time table
  torch_floor    ``python -c "import torch"``: the floor every model run pays; the host is shared and noisy,
                 so the other rows are also given as ratios to it, measured in the same run
  segment        ``python -m oncoseg.cli segment <bundled polyp.jpg> --box 148,160,424,416 -o tmp.png --threads 1``
                 end to end (wall), and the time from process start until the first image embedding returns
                 (a meta-path hook in a tiny wrapper times ``LiteMedSAMBackend.encode``; it loads nothing itself)
  serve          ``python -m oncoseg.cli serve --port <free> --threads 1`` until ``GET /health`` answers 200 (polled
                 every 20 ms), then stopped by its PID
One extra segment run under ``-X importtime`` gives the top import-time entries of the whole command.

Writes ``benchmarks/results/startup.json`` and prints Markdown tables.
Run: ``.venv/bin/python benchmarks/startup.py [--runs 5] [--src DIR]`` (``--src`` times another checkout's
``src`` folder, e.g. an older commit unpacked with ``git archive``).
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
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="repeats of each measurement (default 5)")
    parser.add_argument(
        "--src", type=Path, default=REPO / "src", help="the src folder to time (default: this one)"
    )
    parser.add_argument("--no-serve", action="store_true", help="skip the service measurement")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "startup.json")
    parser.add_argument("--label", default="", help="a name for this run in the JSON (e.g. 'before')")
    parser.add_argument("--no-threads-option", action="store_true",
                        help="for a checkout whose segment has no --threads (OMP_NUM_THREADS=1 is set anyway)")  # fmt: skip
    args = parser.parse_args()
    threads = [] if args.no_threads_option else ["--threads", "1"]
    python, src = sys.executable, args.src.resolve()
    env = child_env(src)
    work = Path(tempfile.mkdtemp(prefix="oncoseg-startup-"))
    load_before = load_average()

    times: dict[str, list[float]] = {"torch_floor": [], "import_cli": [], "segment": [], "first_embedding": [],
                                     "serve_health": []}  # fmt: skip
    cli_imports = ""
    for run in range(args.runs):  # interleaved, so load changes hit every row alike
        elapsed, _ = timed_run([python, "-c", "import torch"], env, work)
        times["torch_floor"].append(elapsed)
        elapsed, done = timed_run([python, "-X", "importtime", "-c", "import oncoseg.cli"], env, work)
        times["import_cli"].append(elapsed)
        cli_imports = cli_imports or done.stderr
        command = [python, "-c", WRAPPER, "segment", str(POLYP), "--box", BOX, "-o", str(work / f"tmp{run}.png"),
                   *threads, "-q"]  # fmt: skip
        start = time.time()
        elapsed, done = timed_run(command, env, work)
        times["segment"].append(elapsed)
        stamp = re.search(r"STARTUP_FIRST_EMBEDDING (\S+)", done.stderr)
        if stamp:
            times["first_embedding"].append(float(stamp[1]) - start)
        if not args.no_serve:
            times["serve_health"].append(serve_ready(python, env, work))
    _, done = timed_run([python, "-X", "importtime", *command[1:]], env, work)
    segment_top, segment_modules = import_table(done.stderr)
    cli_top, cli_modules = import_table(cli_imports)

    floor = statistics.median(times["torch_floor"])
    result = {
        "label": args.label,
        "command": f"{Path(python).name} benchmarks/startup.py --runs {args.runs}"
        + ("" if src == (REPO / "src").resolve() else f" --src {src}"),
        "src": str(src),
        "python": platform.python_version(),
        "load_average_before_after": [load_before, load_average()],
        "times": {name: summary(values) for name, values in times.items() if values},
        "ratio_to_torch_import": {
            name: round(statistics.median(v) / floor, 2) for name, v in times.items() if v
        },
        "heavy_modules_imported": {
            "import oncoseg.cli": sorted(m for m in HEAVY if m in cli_modules),
            "oncoseg segment polyp.jpg": sorted(m for m in HEAVY if m in segment_modules),
        },
        "import_top15": {"import oncoseg.cli": cli_top, "oncoseg segment polyp.jpg": segment_top},
    }
    print(f"## Start-up ({args.runs} runs, load average {load_before} -> {load_average()})\n")
    print("| measurement | median s | min s | max s | × import torch |\n|---|---|---|---|---|")
    for name, values in times.items():
        if values:
            s = result["times"][name]
            print(f"| {name} | {s['median_s']:.2f} | {s['min_s']:.2f} | {s['max_s']:.2f} | "
                  f"{result['ratio_to_torch_import'][name]:.2f} |")  # fmt: skip
    for title, rows in result["import_top15"].items():
        print(
            f"\n### -X importtime, top 15 (cumulative): {title}\n\n| module | cumulative ms | self ms |\n|---|---|---|"
        )
        for row in rows:
            print(
                f"| {'  ' * row['depth']}{row['module']} | {row['cumulative_ms']:.0f} | {row['self_ms']:.0f} |"
            )
    print(f"\nheavy modules imported: {json.dumps(result['heavy_modules_imported'])}")
    existing = json.loads(args.out.read_text()) if args.out.is_file() else {}
    runs = existing.get("runs", {}) if isinstance(existing, dict) else {}
    runs[args.label or "current"] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency and load of ``oncoseg serve``, measured from a real HTTP client against a real uvicorn process.

    .venv/bin/python benchmarks/service_latency.py            # full run (about 2-3 minutes)
    .venv/bin/python benchmarks/service_latency.py --quick    # smoke test (about half a minute)

The image is the example CT DICOM series (20 slices of 512×512, ../shared/data/totalsegmentator-example),
uploaded as a zip. Measured:

* **first click**: a click on a slice whose embedding is not cached (encoder + decoder + answer), every slice
  once, over ``--rounds`` rounds (the image is closed and reopened between rounds, so the cache is cold);
* **later clicks**: further clicks on that slice, sent with the earlier ones as the web page does (refining the
  result; embedding cached, so decoder only);
* **click on a slice shown for ``--think`` s** (the web page's flow, encoding ahead): on a freshly opened image a
  random slice's PNG is fetched, which makes the idle server encode that slice and then its neighbours; the
  click follows ``--think`` seconds later, then ``--later`` refining clicks while the server goes on encoding
  ahead (``--views`` times, default 20). Beside them the time they waited (round trip − model-thread time:
  queueing behind background work, HTTP) and, in-process with the server idle, that click's decoding alone;
* **reference**: in this process, without HTTP or the service, right after each first click: the encoder alone
  on the same slice and a first click's decoding alone (six candidate boxes): what the first click cannot go
  below. Taken at the same moment as the server's click, so that the per-click ratio server / reference is not
  a matter of the shared machine's load;
* **3D jobs** (the web page's Propagate 3D): a propagation from the liver box on slice 10 (``--quick``: 2 slices
  each way; else the whole volume), polled every 0.1 s; a correction (a box) on slice 11 and its re-walk; a
  whole-volume propagation cancelled once a slice has finished. Reported: the first finished slice, the whole job,
  the time from the cancel to the job stopping, and the polls' round trip while the model works (polls never
  wait for the model). Skipped (``"jobs": null``) against a server without jobs;
* **load**: ``--clients`` concurrent clients, each with its own open copy of the series (opened first, not timed), clicking for
  ``--seconds`` without pause: ``--clicks-per-slice`` clicks (random points) on a random slice, then the next
  slice, whose PNG it fetches first as the page does (so the server encodes ahead, and first clicks and cached
  clicks mix), while a probe polls ``/health`` every 0.25 s and the server's
  RSS and cache size are sampled. Allowed answers: 200 and deliberate 429/503 backpressure (the client waits
  and retries).

Prints a Markdown table and writes JSON (default ``benchmarks/results/service_latency.json``; ``--quick``
writes ``service_latency.quick.json`` unless ``--output`` is given). Targets (the issue's, on 2 CPU cores):
first click p95 ≤ 300 ms (issue 22: a cold click), a click on a slice shown for 1 s p95 ≤ 150 ms, later clicks p95 ≤ 60 ms, 0 errors other than 429/503 under load, memory under the
budget, health answered throughout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from common import git_commit
from serve_process import ServeProcess

REPO = Path(__file__).resolve().parents[1]
SERIES = REPO.parent / "shared/data/totalsegmentator-example/example_ct_dicom"
OUT = REPO / "benchmarks" / "results"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    array = np.asarray(values)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(array, 50)), 1),
        "p95": round(float(np.percentile(array, 95)), 1),
        "max": round(float(array.max()), 1),
        "mean": round(float(array.mean()), 1),
    }


def start_server(budget_mb: float, max_queue: int, workdir: Path, threads: int = 1) -> ServeProcess:
    options = ["--memory-budget-mb", str(budget_mb), "--max-queue", str(max_queue), "--threads", str(threads)]
    return ServeProcess(options, workdir)


def series_zip() -> bytes:
    if not SERIES.is_dir():
        raise SystemExit(f"{SERIES} not found: the example CT series lives in ../shared/data")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(SERIES.iterdir()):
            archive.write(path, path.name)
    return buffer.getvalue()


def open_image(client: httpx.Client, data: bytes, statuses: dict | None = None) -> dict:
    """Upload the series; on deliberate backpressure (429/503) wait as told and try again."""
    while True:
        answer = client.post("/api/images/upload", files={"file": ("ct.zip", data)})
        if statuses is not None:
            statuses[str(answer.status_code)] = statuses.get(str(answer.status_code), 0) + 1
        if answer.status_code not in (429, 503):
            answer.raise_for_status()
            return answer.json()
        time.sleep(float(answer.headers.get("retry-after", "1")))


def click(
    client: httpx.Client,
    image_id: str,
    z: int,
    x: int,
    y: int,
    earlier: list | None = None,
    positive: bool = True,
) -> tuple[int, float, dict]:
    """POST one click as the web page does: ``earlier`` clicks on the slice are sent along (a refinement), the
    PNG overlay is asked for and the polygon outlines are not (the page draws the PNG)."""
    points = [*(earlier or []), {"x": x, "y": y, "positive": positive}]
    start = time.perf_counter()
    answer = client.post(
        f"/api/images/{image_id}/segment",
        json={"z": z, "points": points, "overlay": True, "contours": False},
    )
    if earlier is not None:
        earlier.append(points[-1])
    elapsed = 1000 * (time.perf_counter() - start)
    return answer.status_code, elapsed, answer.json() if answer.status_code == 200 else {}


def measure_clicks(
    url: str, data: bytes, rounds: int, later: int, rng: random.Random, slices: int | None = None
) -> dict:
    """First and later clicks on the server; right after each first click, the same slice's work in this process
    (the encoder alone, then a first click's decoding alone), so that server and reference meet the same
    moment of a shared machine's load and their ratio can be read per pair."""
    from oncoseg.io import load_image
    from oncoseg.predictor import Predictor
    from oncoseg.prompts import Point, Prompt

    volume = load_image(SERIES)
    predictor = Predictor(cache_slices=volume.num_slices)
    predictor.set_image(volume)
    predictor.predict(Prompt(points=(Point(256, 256, z=0),)), z=0)  # warm-up (threads set by the caller)
    first, repeat, cached_flags, first_compute, repeat_compute = [], [], [], [], []
    encode, decode = [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(rounds):
            image = open_image(client, data)
            predictor.set_image(volume)  # drops the cached embeddings
            for z in range(min(slices or image["num_slices"], image["num_slices"])):
                clicks: list = []
                status, ms, answer = click(client, image["image_id"], z, 256, 256, clicks)
                assert status == 200, status
                first.append(ms)
                first_compute.append(answer["compute_ms"])
                cached_flags.append(answer["embedding_cached"])
                start = time.perf_counter()
                predictor.embedding(z)
                encode.append(1000 * (time.perf_counter() - start))
                start = time.perf_counter()
                predictor.predict(Prompt(points=(Point(256, 256, z=z),)), z=z)
                decode.append(1000 * (time.perf_counter() - start))
                for _ in range(later):  # refining clicks near the first, 1 in 3 excluding
                    x, y = 256 + rng.randint(-40, 40), 256 + rng.randint(-40, 40)
                    status, ms, answer = click(
                        client, image["image_id"], z, x, y, clicks, positive=rng.random() > 1 / 3
                    )
                    assert status == 200 and answer["embedding_cached"], status
                    repeat.append(ms)
                    repeat_compute.append(answer["compute_ms"])
            client.delete(f"/api/images/{image['image_id']}")
    assert not any(cached_flags), "a 'first' click found its embedding cached"
    paired = np.asarray(first_compute) / (np.asarray(encode) + np.asarray(decode))
    return {
        "first_click_ms": percentiles(first),
        "later_click_ms": percentiles(repeat),
        # time inside the server's model thread (encode and/or decode, mask encodings, measurements)
        "first_click_server_compute_ms": percentiles(first_compute),
        "later_click_server_compute_ms": percentiles(repeat_compute),
        "reference_encoder_ms": percentiles(encode),
        "reference_click_decode_ms": percentiles(decode),
        # per first click: server compute / (in-process encoder + decoding) measured right after it
        "first_click_server_over_reference": round(float(np.median(paired)), 3),
    }


def measure_viewed_clicks(
    url: str, data: bytes, views: int, think: float, later: int, rng: random.Random, threads: int
) -> dict:
    """The web page's flow on a freshly opened image (nothing encoded yet): a random slice is shown (its PNG
    fetched, which makes the idle server encode it, then its neighbours outward), the user looks for ``think``
    seconds and clicks, then clicks ``later`` more times while the server goes on encoding ahead (each click
    abandons the background encode in flight). ``wait`` is a click's round trip minus its model-thread time:
    the queueing behind background work plus HTTP. Right after each view, with the image closed (the server
    idle), the in-process reference: the same first click's decoding alone on that slice (the encoder's time
    is not counted), i.e. what a click on a ready slice cannot go below."""
    from oncoseg.io import load_image
    from oncoseg.predictor import Predictor
    from oncoseg.prompts import Point, Prompt

    torch_threads(threads)
    volume = load_image(SERIES)
    predictor = Predictor(cache_slices=volume.num_slices)
    predictor.set_image(volume)
    first, first_wait, later_ms, later_wait, decode, ready_counts = [], [], [], [], [], []
    cached, preempted = 0, 0
    with httpx.Client(base_url=url, timeout=120) as client:
        before = client.get("/health").json().get("preempted", 0)
        for _ in range(views):
            image = open_image(client, data)
            z = rng.randrange(image["num_slices"])
            client.get(f"/api/images/{image['image_id']}/slices/{z}").raise_for_status()
            time.sleep(think)
            clicks: list = []
            status, ms, answer = click(client, image["image_id"], z, 256, 256, clicks)
            assert status == 200, status
            first.append(ms)
            first_wait.append(ms - answer["compute_ms"])
            cached += bool(answer["embedding_cached"])
            for _ in range(later):  # refining clicks near the first while the server encodes ahead
                x, y = 256 + rng.randint(-40, 40), 256 + rng.randint(-40, 40)
                status, ms, answer = click(
                    client, image["image_id"], z, x, y, clicks, positive=rng.random() > 1 / 3
                )
                assert status == 200 and answer["embedding_cached"], status
                later_ms.append(ms)
                later_wait.append(ms - answer["compute_ms"])
            ready = client.get(f"/api/images/{image['image_id']}/ready")
            ready_counts.append(len(ready.json()["ready"]) if ready.status_code == 200 else -1)
            client.delete(f"/api/images/{image['image_id']}")
            predictor.embedding(z)
            start = time.perf_counter()
            predictor.predict(Prompt(points=(Point(256, 256, z=z),)), z=z)
            decode.append(1000 * (time.perf_counter() - start))
        preempted = client.get("/health").json().get("preempted", 0) - before
    return {
        "viewed_first_click_ms": percentiles(first),
        "viewed_first_click_wait_ms": percentiles(first_wait),
        "viewed_later_click_ms": percentiles(later_ms),
        "viewed_later_click_wait_ms": percentiles(later_wait),
        "viewed_reference_click_decode_ms": percentiles(decode),
        "viewed_think_s": think,
        "viewed_prefetched": cached,
        "viewed_ready_slices_after_clicks": percentiles(ready_counts),
        "viewed_background_encodes_abandoned": preempted,
    }


def torch_threads(threads: int) -> None:
    """This process's reference runs with the server's thread count."""
    import torch

    torch.set_num_threads(threads)


LIVER_BOX = [107, 196, 269, 374]  # the liver on the middle slice (z = 10) of the example CT


def measure_jobs(url: str, data: bytes, max_slices: int | None) -> dict | None:
    """3D jobs as the web page runs them: a propagation from the liver box on slice 10 (``max_slices`` each way),
    polled every 0.1 s (the poll's round trip while the model works, the first finished slice, the whole job);
    a correction (a box) on slice 11 with its re-walk; a propagation through the whole volume cancelled once a
    slice has finished (the time from DELETE to the job reporting it stopped). None when the server has no jobs
    (an older version)."""
    polls, jobs = [], {}
    with httpx.Client(base_url=url, timeout=120) as client:
        image = open_image(client, data)
        base = f"/api/images/{image['image_id']}/jobs"

        def run(body: dict, cancel_after_first: bool = False) -> dict:
            start = time.perf_counter()
            answer = client.post(base, json=body)
            if answer.status_code in (404, 405):
                return {}
            answer.raise_for_status()
            job, first_slice, cancelled_at = answer.json(), None, None
            while job["state"] not in ("done", "cancelled", "failed"):
                time.sleep(0.1)
                sent = time.perf_counter()
                job = client.get(f"{base}/{job['job_id']}").json()
                polls.append(1000 * (time.perf_counter() - sent))
                if job["slices"] and first_slice is None:
                    first_slice = 1000 * (time.perf_counter() - start)
                    if cancel_after_first:
                        cancelled_at = time.perf_counter()
                        client.delete(f"{base}/{job['job_id']}").raise_for_status()
            end = time.perf_counter()
            return {
                "state": job["state"],
                "slices_done": job["done"],
                "total": job["total"],
                "first_slice_ms": round(first_slice, 1) if first_slice is not None else None,
                "job_ms": round(1000 * (end - start), 1),
                "compute_ms": job["result"]["compute_ms"] if job["result"] else None,
                "cancel_ms": round(1000 * (end - cancelled_at), 1) if cancelled_at is not None else None,
            }

        jobs["propagate"] = run({"z": 10, "box": LIVER_BOX, "max_slices": max_slices})
        if not jobs["propagate"]:
            client.delete(f"/api/images/{image['image_id']}")
            return None
        jobs["correct"] = run({"action": "refine", "z": 11, "box": [107, 196, 200, 374]})
        jobs["cancel"] = run({"z": 9, "box": LIVER_BOX}, cancel_after_first=True)
        client.delete(f"/api/images/{image['image_id']}")
    return {**jobs, "max_slices": max_slices, "poll_ms": percentiles(polls)}


def load_test(
    server: ServeProcess,
    data: bytes,
    clients: int,
    seconds: float,
    budget_mb: float,
    seed: int,
    clicks_per_slice: int,
) -> dict:
    stop = threading.Event()
    statuses: dict[str, int] = {}
    opens: dict[str, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    health_ms: list[float] = []
    health_failures = [0]
    rss: list[float] = []
    cache: list[int] = []
    lock = threading.Lock()

    opened, go = threading.Semaphore(0), threading.Event()

    def user(index: int) -> None:
        try:
            clicking(index)
        except Exception as error:  # noqa: BLE001 - counted, never lost in a thread
            with lock:
                errors.append(f"client crashed: {error!r}")

    def clicking(index: int) -> None:
        rng = random.Random(seed + index)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            try:
                image = open_image(client, data, opens)
            except httpx.HTTPError as error:
                with lock:
                    errors.append(f"open: {error!r}")
                return
            finally:
                opened.release()
            go.wait()
            clicks_here, z = 0, 0
            while not stop.is_set():
                if clicks_here == 0:  # a user shows a slice (the server encodes ahead), clicks a few times
                    z, clicks_here = rng.randrange(image["num_slices"]), clicks_per_slice
                    try:
                        shown = client.get(f"/api/images/{image['image_id']}/slices/{z}")
                    except httpx.HTTPError as error:
                        with lock:
                            errors.append(repr(error))
                        continue
                    if shown.status_code != 200:
                        with lock:
                            errors.append(f"slice HTTP {shown.status_code}")
                x, y = rng.randint(150, 360), rng.randint(150, 360)
                try:
                    status, ms, _ = click(client, image["image_id"], z, x, y)
                except httpx.HTTPError as error:
                    with lock:
                        errors.append(repr(error))
                    continue
                with lock:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status == 200:
                        latencies.append(ms)
                        clicks_here -= 1
                    elif status not in (429, 503):
                        errors.append(f"HTTP {status}")
                if status in (429, 503):
                    time.sleep(0.2 + rng.random() * 0.8)  # back off as told

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    answer = client.get("/health")
                    health_ms.append(1000 * (time.perf_counter() - start))
                    if answer.status_code != 200:
                        health_failures[0] += 1
                    else:
                        cache.append(answer.json()["cache_bytes"])
                except httpx.HTTPError:
                    health_failures[0] += 1
                rss.append(rss_mb(server.process.pid))
                time.sleep(0.25)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(clients)] + [
        threading.Thread(target=probe)
    ]
    abandoned_before = httpx.get(f"{server.url}/health", timeout=10).json().get("preempted", 0)
    opening = time.monotonic()
    for thread in threads:
        thread.start()
    for _ in range(clients):  # every client opens its image first; the clock starts when all have
        opened.acquire()
    open_s = time.monotonic() - opening
    start = time.monotonic()
    go.set()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    duration = time.monotonic() - start
    final = httpx.get(f"{server.url}/health", timeout=10).json()
    return {
        "clients": clients,
        "seconds": round(duration, 1),
        "clicks_per_slice": clicks_per_slice,
        "opening_s": round(open_s, 1),
        "statuses": statuses,
        "open_statuses": opens,
        "errors": len(errors),
        "error_examples": errors[:5],
        "answered_per_s": round(statuses.get("200", 0) / duration, 2),
        "click_ms_200": percentiles(latencies),
        "health_ms": percentiles(health_ms),
        "health_failures": health_failures[0],
        "cache_mb_max": round(max(cache, default=0) / 2**20, 1),
        "cache_high_water_mb": round(final["high_water_bytes"] / 2**20, 1),
        "budget_mb": budget_mb,
        "rss_mb_max": round(max(rss, default=float("nan")), 1),
        "evicted_sessions": final["evicted_sessions"],
        "background_encodes_abandoned": final.get("preempted", 0) - abandoned_before,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--rounds", type=int, help="cold passes over the 20 slices (default 3; quick 1)")
    parser.add_argument("--slices", type=int, help="first clicks on the first N slices only (default all 20)")
    parser.add_argument("--later", type=int, help="cached clicks after each first click (default 3; quick 1)")
    parser.add_argument(
        "--clients", type=int, help="concurrent clients in the load phase (default 20; quick 4)"
    )
    parser.add_argument("--seconds", type=float, help="length of the load phase (default 60; quick 8)")
    parser.add_argument(
        "--budget-mb", type=float, default=1024, help="server --memory-budget-mb (default 1024)"
    )
    parser.add_argument("--max-queue", type=int, default=8, help="server --max-queue (default 8)")
    parser.add_argument("--clicks-per-slice", type=int, default=3, help="load phase: clicks per slice (3)")
    parser.add_argument("--think", type=float, default=1.0, help="seconds between viewing and clicking (1.0)")
    parser.add_argument("--views", type=int, help="viewed-then-clicked fresh images (default 20; quick 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, server and reference (1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="JSON path")
    args = parser.parse_args(argv)
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    later = args.later or (1 if quick else 3)
    clients = args.clients or (4 if quick else 20)
    seconds = args.seconds or (8.0 if quick else 60.0)
    output = Path(args.output or OUT / ("service_latency.quick.json" if quick else "service_latency.json"))

    data = series_zip()
    load_before = os.getloadavg()[0]  # other jobs; the load phase below raises it by itself
    with tempfile.TemporaryDirectory(prefix="oncoseg-bench-") as tmp:
        started = time.perf_counter()
        torch_threads(args.threads)
        server = start_server(args.budget_mb, args.max_queue, Path(tmp), args.threads)
        startup_s = time.perf_counter() - started
        startup_rss_mb = rss_mb(server.process.pid)  # model loaded and warmed up, no image open
        try:
            clicks = measure_clicks(server.url, data, rounds, later, random.Random(args.seed), args.slices)
            views = args.views or (5 if quick else 20)
            rng = random.Random(args.seed + 1)
            clicks.update(
                measure_viewed_clicks(server.url, data, views, args.think, later, rng, args.threads)
            )
            jobs = measure_jobs(server.url, data, 2 if quick else None)
            load = load_test(server, data, clients, seconds, args.budget_mb, args.seed, args.clicks_per_slice)
        except BaseException:
            log = Path(tmp) / "server.log"
            tail = (
                log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:] if log.exists() else []
            )
            print("server log (last lines):", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            server.stop()

    result = {
        "command": " ".join(["benchmarks/service_latency.py", *(argv if argv is not None else sys.argv[1:])]),
        "git_commit": git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m": os.getloadavg()[0],
            "load_avg_1m_before": load_before,
        },
        "image": "example CT DICOM series, 20 x 512 x 512, uploaded as a zip",
        "startup_s": round(startup_s, 1),
        "startup_rss_mb": round(startup_rss_mb, 1),
        **clicks,
        "load": load,
        "jobs": jobs,
        "threads": args.threads,
        "targets": {"first_click_p95_ms": 300, "later_click_p95_ms": 60, "viewed_click_p95_ms": 150},
    }
    first, later_ms = clicks["first_click_ms"], clicks["later_click_ms"]
    result["meets"] = {
        "first_click": first["p95"] <= 300,
        "later_click": later_ms["p95"] <= 60,
        "viewed_click": clicks["viewed_first_click_ms"]["p95"] <= 150,
        "viewed_later_click": clicks["viewed_later_click_ms"]["p95"] <= 60,
        "no_errors": load["errors"] == 0,
        "health_throughout": load["health_failures"] == 0,
        "memory_under_budget": load["cache_high_water_mb"] <= args.budget_mb,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2), encoding="utf-8")

    rows = [
        ("first click on a new 512×512 slice", first, "p95 ≤ 300 ms"),
        ("  of which server compute", clicks["first_click_server_compute_ms"], "-"),
        ("  reference: the encoder alone, in-process", clicks["reference_encoder_ms"], "-"),
        ("  reference: a first click's decoding alone", clicks["reference_click_decode_ms"], "-"),
        ("later click on the same slice", later_ms, "p95 ≤ 60 ms"),
        ("  of which server compute", clicks["later_click_server_compute_ms"], "-"),
        (
            f"click on a slice shown for {args.think:g} s (fresh image, page flow)",
            clicks["viewed_first_click_ms"],
            "p95 ≤ 150 ms",
        ),
        ("  of which waiting (round trip − model thread)", clicks["viewed_first_click_wait_ms"], "-"),
        (
            "  reference: that click's decoding alone, in-process",
            clicks["viewed_reference_click_decode_ms"],
            "-",
        ),
        ("later clicks there, while encoding ahead", clicks["viewed_later_click_ms"], "p95 ≤ 60 ms"),
        ("  of which waiting (round trip − model thread)", clicks["viewed_later_click_wait_ms"], "-"),
        (f"clicks under load ({clients} clients, answered)", load["click_ms_200"], "-"),
        ("/health under load", load["health_ms"], "always answered"),
    ]
    print("| measurement | n | p50 ms | p95 ms | max ms | target |")
    print("|---|---|---|---|---|---|")
    for name, stats, target in rows:
        print(f"| {name} | {stats.get('n', 0)} | {stats.get('p50', '-')} | {stats.get('p95', '-')} | "
              f"{stats.get('max', '-')} | {target} |")  # fmt: skip
    print(
        f"\nload: {load['seconds']} s, click statuses {load['statuses']}, image opens {load['open_statuses']}, "
        f"errors {load['errors']}, "
        f"health failures {load['health_failures']}, cache high water {load['cache_high_water_mb']} MiB "
        f"of {args.budget_mb:.0f} MiB budget, server RSS max {load['rss_mb_max']} MiB "
        f"(after start-up {result['startup_rss_mb']} MiB, ready in {result['startup_s']} s), "
        f"load average {result['machine']['load_avg_1m']:.1f}"
    )
    print(
        f"viewed clicks: {clicks['viewed_prefetched']}/{clicks['viewed_first_click_ms'].get('n', 0)} found their "
        f"slice encoded; slices ready after the clicks: median {clicks['viewed_ready_slices_after_clicks'].get('p50')}; "
        f"background encodes abandoned for a request: {clicks['viewed_background_encodes_abandoned']} "
        f"(load phase: {load['background_encodes_abandoned']}); torch threads {args.threads}"
    )
    print(
        "first click, server compute / in-process (encoder + decoding) right after it: median "
        f"{clicks['first_click_server_over_reference']:.2f}"
    )
    if jobs is None:
        print("3D jobs: not offered by this server version")
    else:
        for name in ("propagate", "correct", "cancel"):
            job = jobs[name]
            print(
                f"3D job {name}: {job['state']}, {job['slices_done']}/{job['total']} slices, first finished slice "
                f"after {job['first_slice_ms']} ms, job {job['job_ms']} ms (compute {job['compute_ms']} ms)"
                + (
                    f", stopped {job['cancel_ms']} ms after the cancel"
                    if job["cancel_ms"] is not None
                    else ""
                )
            )
        print(
            f"job polls while the model works: p50 {jobs['poll_ms'].get('p50')} ms, max {jobs['poll_ms'].get('max')} ms"
        )
    print(f"targets met: {result['meets']}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

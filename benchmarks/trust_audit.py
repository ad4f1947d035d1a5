"""Trust audit of issue 20's opening table: each row tried again on today's code, the way the issue says a user
did, with today's number beside the issue's and the truth, and whether the result's quality estimate flags it.

    nice -n 19 .venv/bin/python benchmarks/trust_audit.py            # about 3-5 minutes on 2 cores

The working tree may hold other engineers' unfinished edits: to audit one commit, export it and put it first on
the path (the CLI and server subprocesses inherit it): ``git archive HEAD src | tar -x -C /tmp/audit &&
PYTHONPATH=/tmp/audit/src nice -n 19 .venv/bin/python benchmarks/trust_audit.py``; the JSON records which
source ran (``environment.oncoseg_source``).

Cases (TotalSegmentator example CT, ../shared/data/totalsegmentator-example; its labels are TotalSegmentator's
own predictions, the only "truth" there is for these CTs):

* **CLI, 3 mm CT**: ``oncoseg segment example_ct_sm.nii.gz --box <liver's box on its largest slice> --3d``;
  volume vs the liver label, Dice, how much of the result lies in the right kidney, per-slice Dice range.
* **CLI, DICOM series**: the same with the 20-slice DICOM series (``example_ct_dicom``).
* **CLI, a click on a small hyperdense spot inside the liver** (DICOM series), ``--point X,Y,Z --3d``. The spot
  is found from the image: voxels brighter than the liver's median + 40 HU inside the liver label eroded by
  3 px in-plane; the largest 3D connected piece is the target (a contrast-filled vessel: the liver has no
  calcification brighter than ~180 HU here); the click is its deepest pixel on its largest slice.
* **Service** (a real ``oncoseg serve --threads N`` on 127.0.0.1, started and stopped by PID; the series
  uploaded as a zip, as the web page does): a click at the liver's deepest point on several slices (each a new
  result, stable?), then on each slice a second include click at the deepest liver point the first mask missed
  (never smaller, keeps the first region?); Propagate 3D as a job from the click and from the liver's box on the
  middle slice (volume vs truth, time, the progress the job reported), and a propagation cancelled once it has
  finished two slices (the result stays as it was).

"Bad" is the issue's own calibration line (item 5): Dice < 0.7 against the label. A flag is right when it is
raised on a bad result or not raised on a good one. Prints a Markdown table and writes
``benchmarks/results/trust_audit.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from common import DEFAULT_DATA, DEFAULT_OUT, dice, environment, markdown_table, write_json
from scipy import ndimage
from serve_process import ONCOSEG, ServeProcess

import oncoseg
from oncoseg.io import load_image
from oncoseg.service.core import rle_decode

LIVER, KIDNEY_RIGHT = 5, 2  # TotalSegmentator "total" labels (label_map_total_and_total_mr.json)
BAD_DICE = 0.7  # issue 20 item 5: a result with Dice < 0.7 is one the flag should catch
SPOT_CONTRAST_HU = 40
CLICK_SLICES = (1, 4, 7, 10, 13, 16, 19)


# ---------------------------------------------------------------------- ground truth and helpers
def load_case(folder: Path, image: str, labels: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Pixels (HU), label map and spacing (x, y, z) of one CT, both on Onco-Seg's LPS grid."""
    ct, seg = load_image(folder / image), load_image(folder / labels)
    if ct.shape != seg.shape:
        raise SystemExit(f"{image} and {labels} differ in shape: {ct.shape} vs {seg.shape}")
    return ct.array.astype(np.float32), seg.array.astype(np.int32), tuple(float(s) for s in ct.spacing)


def ml(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    return float(mask.sum() * np.prod(spacing) / 1000.0)


def box_of(mask2d: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask2d)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def deepest(mask2d: np.ndarray) -> tuple[int, int]:
    """The pixel farthest from the mask's border (where a user clicks "inside" it): (x, y)."""
    distance = ndimage.distance_transform_edt(mask2d)
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return int(x), int(y)


def find_spot(hu: np.ndarray, liver: np.ndarray) -> tuple[np.ndarray, int, tuple[int, int], float]:
    """The small hyperdense structure inside the liver (see the module text): its 3D mask, the click slice, the
    click (x, y) and the threshold used."""
    threshold = float(np.median(hu[liver])) + SPOT_CONTRAST_HU
    inner = ndimage.binary_erosion(liver, structure=np.ones((1, 7, 7), bool))
    pieces, count = ndimage.label((hu > threshold) & inner)
    if count == 0:
        raise SystemExit("no structure brighter than the liver inside it: nothing to click on")
    sizes = ndimage.sum_labels(np.ones_like(pieces), pieces, index=range(1, count + 1))
    spot = pieces == int(np.argmax(sizes)) + 1
    z = int(spot.sum(axis=(1, 2)).argmax())
    return spot, z, deepest(spot[z]), threshold


def quality_row(quality: dict | None, bad: bool) -> dict:
    flagged = bool(quality and quality.get("review"))
    return {
        "estimate": quality.get("estimate") if quality else None,
        "review": flagged,
        "reasons": quality.get("reasons") if quality else None,
        "bad": bad,
        "flag_right": flagged == bad,
    }


def flag_text(q: dict) -> str:
    """ "REVIEW 0.31: false alarm" / "no (0.80): right" / ...: the flag and whether it is right by BAD_DICE."""
    if q["estimate"] is None:
        return "no estimate"
    word = f"REVIEW {q['estimate']:.2f}" if q["review"] else f"no ({q['estimate']:.2f})"
    verdict = "right" if q["flag_right"] else ("false alarm" if q["review"] else "MISSED")
    return f"{word}: {verdict}"


# ---------------------------------------------------------------------- CLI rows
def run_cli(source: Path, prompt: list[str], threads: int, folder: Path) -> tuple[dict, np.ndarray, float]:
    """``oncoseg segment SOURCE PROMPT --3d --json``: its JSON object and the written mask on the LPS grid."""
    out = folder / f"cli-{len(list(folder.iterdir()))}.nii.gz"
    command = [
        str(ONCOSEG),
        "segment",
        str(source),
        *prompt,
        "--3d",
        "--threads",
        str(threads),
        "-q",
        "--json",
    ]
    start = time.perf_counter()
    done = subprocess.run([*command, "-o", str(out)], capture_output=True, encoding="utf-8", check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"oncoseg segment failed ({done.returncode}): {done.stderr.strip()}")
    answer = json.loads(done.stdout)
    (obj,) = answer["objects"]
    return obj, load_image(out).array > 0, seconds


def cli_liver_box(name: str, source: Path, hu, seg, spacing, threads: int, folder: Path) -> dict:
    liver, kidney = seg == LIVER, seg == KIDNEY_RIGHT
    z = int(liver.sum(axis=(1, 2)).argmax())
    x0, y0, x1, y1 = box_of(liver[z])
    prompt = ["--box", f"{x0},{y0},{x1},{y1},{z}"]
    obj, mask, seconds = run_cli(source, prompt, threads, folder)
    per_slice = {k: round(dice(mask[k], liver[k]), 3) for k in range(mask.shape[0]) if liver[k].any()}
    into_kidney = mask & kidney
    kidney_slices = sorted(int(k) for k in np.nonzero(into_kidney.any(axis=(1, 2)))[0])
    d = dice(mask, liver)
    return {
        "case": name,
        "command": f"oncoseg segment {source.name} {' '.join(prompt)} --3d --threads {threads}",
        "volume_ml": round(ml(mask, spacing), 1),
        "cli_volume_ml": obj["volume_ml"],
        "truth_ml": round(ml(liver, spacing), 1),
        "volume_error": round(ml(mask, spacing) / ml(liver, spacing) - 1, 3),
        "dice": round(d, 3),
        "slices": obj.get("slices"),
        "truth_slices": [int(k) for k in np.nonzero(liver.any(axis=(1, 2)))[0][[0, -1]]],
        "slice_dice": per_slice,
        "slice_dice_range": [min(per_slice.values()), max(per_slice.values())],
        "into_right_kidney_ml": round(ml(into_kidney, spacing), 1),
        "right_kidney_leak_slices": kidney_slices,
        "slice_dice_on_leak_slices": [per_slice[k] for k in kidney_slices if k in per_slice],
        "outside_liver_ml": round(ml(mask & ~liver, spacing), 1),
        "seconds": round(seconds, 1),
        "quality": quality_row(obj.get("quality"), d < BAD_DICE),
    }


def cli_spot(source: Path, hu, seg, spacing, threads: int, folder: Path) -> dict:
    liver = seg == LIVER
    spot, z, (x, y), threshold = find_spot(hu, liver)
    prompt = ["--point", f"{x},{y},{z}"]
    obj, mask, seconds = run_cli(source, prompt, threads, folder)
    d_spot, d_liver = dice(mask, spot), dice(mask, liver)
    return {
        "case": "click on a small hyperdense spot inside the liver (DICOM series)",
        "command": f"oncoseg segment {source.name} {' '.join(prompt)} --3d --threads {threads}",
        "spot": {
            "what": "contrast-filled vessel inside the liver label (largest 3D piece brighter than the "
            f"liver's median + {SPOT_CONTRAST_HU} HU, inside the liver eroded 3 px in-plane)",
            "threshold_hu": threshold,
            "mean_hu": round(float(hu[spot].mean()), 1),
            "liver_median_hu": float(np.median(hu[liver])),
            "volume_ml": round(ml(spot, spacing), 2),
            "voxels": int(spot.sum()),
            "slices": [int(k) for k in np.nonzero(spot.any(axis=(1, 2)))[0][[0, -1]]],
            "click_slice_area_px": int(spot[z].sum()),
        },
        "click": [x, y, z],
        "volume_ml": round(ml(mask, spacing), 1),
        "liver_ml": round(ml(liver, spacing), 1),
        "dice_vs_spot": round(d_spot, 3),
        "dice_vs_liver": round(d_liver, 3),
        "slice_area_px": int(mask[z].sum()),
        "share_of_liver_covered": round(float((mask & liver).sum() / liver.sum()), 3),
        "gives": "the spot" if d_spot > d_liver else "the liver (or a part of it)",
        "alternatives": obj.get("alternatives"),
        "seconds": round(seconds, 1),
        "quality": quality_row(obj.get("quality"), d_spot < BAD_DICE),
    }


# ---------------------------------------------------------------------- service rows
def series_zip(series: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(series.iterdir()):
            archive.write(path, path.name)
    return buffer.getvalue()


def click(client: httpx.Client, image_id: str, z: int, points: list[dict]) -> dict:
    answer = client.post(
        f"/api/images/{image_id}/segment",
        json={"z": z, "points": points, "overlay": False, "contours": False},
    )
    answer.raise_for_status()
    return answer.json()


def service_clicks(client: httpx.Client, image_id: str, liver: np.ndarray) -> dict:
    """One click at the liver's deepest point on several slices, then a second include click on each."""
    rows = []
    for z in CLICK_SLICES:
        first_xy = deepest(liver[z])
        first_pt = {"x": first_xy[0], "y": first_xy[1], "positive": True}
        first = click(client, image_id, z, [first_pt])
        mask1 = rle_decode(first["mask"]).astype(bool)
        missed = liver[z] & ~mask1
        second_xy = deepest(missed) if missed.sum() >= 20 else deepest(liver[z] & ~disc(liver[z], first_xy))
        second = click(
            client, image_id, z, [first_pt, {"x": second_xy[0], "y": second_xy[1], "positive": True}]
        )
        mask2 = rle_decode(second["mask"]).astype(bool)
        d1, d2 = dice(mask1, liver[z]), dice(mask2, liver[z])
        rows.append({
            "z": z,
            "click": list(first_xy),
            "liver_area_px": int(liver[z].sum()),
            "area_px": int(mask1.sum()),
            "share_of_liver": round(float((mask1 & liver[z]).sum() / liver[z].sum()), 3),
            "dice": round(d1, 3),
            "alternatives": first["alternatives"],
            "quality": quality_row(first["quality"], d1 < BAD_DICE),
            "second_click": list(second_xy),
            "second_refined": second.get("refined"),
            "second_area_px": int(mask2.sum()),
            "second_dice": round(d2, 3),
            "second_smaller": bool(mask2.sum() < mask1.sum()),
            "first_region_kept": round(float((mask1 & mask2).sum() / max(1, mask1.sum())), 3),
            "second_quality": quality_row(second["quality"], d2 < BAD_DICE),
        })  # fmt: skip
    shares = [r["share_of_liver"] for r in rows]
    return {
        "slices": rows,
        "share_of_liver_range": [min(shares), max(shares)],
        "dice_range": [min(r["dice"] for r in rows), max(r["dice"] for r in rows)],
        "second_smaller": sum(r["second_smaller"] for r in rows),
        "first_region_kept_min": min(r["first_region_kept"] for r in rows),
        "flag_right": sum(r["quality"]["flag_right"] for r in rows),
        "second_flag_right": sum(r["second_quality"]["flag_right"] for r in rows),
    }


def disc(shape_mask: np.ndarray, centre: tuple[int, int], radius: float = 25) -> np.ndarray:
    ys, xs = np.ogrid[: shape_mask.shape[0], : shape_mask.shape[1]]
    return (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius**2


def run_job(client: httpx.Client, image_id: str, body: dict, cancel_after: int | None = None) -> dict:
    """Start a 3D job and poll it every 0.25 s (as the web page does) until it ends; with ``cancel_after`` it
    is cancelled once that many slices are done."""
    start = time.perf_counter()
    answer = client.post(f"/api/images/{image_id}/jobs", json=body)
    answer.raise_for_status()
    job = answer.json()
    progress, cancelled_at = [], None
    while job["state"] not in ("done", "cancelled", "failed"):
        progress.append((job["done"], job["total"]))
        if cancel_after is not None and cancelled_at is None and job["done"] >= cancel_after:
            cancelled_at = time.perf_counter()
            client.delete(f"/api/images/{image_id}/jobs/{job['job_id']}").raise_for_status()
        time.sleep(0.25)
        job = client.get(f"/api/images/{image_id}/jobs/{job['job_id']}").json()
    end = time.perf_counter()
    return {
        "state": job["state"],
        "seconds": round(end - start, 1),
        "cancel_to_stop_s": round(end - cancelled_at, 2) if cancelled_at else None,
        "progress_updates": len({p for p in progress}),
        "last_progress": list(progress[-1]) if progress else None,
        "result": job.get("result"),
        "error": job.get("error"),
    }


def result_volume(client: httpx.Client, image_id: str, depth: int) -> np.ndarray:
    from PIL import Image

    slices = []
    for z in range(depth):
        png = client.get(f"/api/images/{image_id}/result/{z}")
        png.raise_for_status()
        slices.append(np.asarray(Image.open(io.BytesIO(png.content)).convert("RGBA"))[..., 3] > 0)
    return np.stack(slices)


def service_propagate(client, image_id: str, liver: np.ndarray, spacing, name: str, body: dict) -> dict:
    job = run_job(client, image_id, body)
    row = {"case": name, "request": body, **{k: v for k, v in job.items() if k != "result"}}
    if job["state"] != "done":
        return row
    mask = result_volume(client, image_id, liver.shape[0])
    d = dice(mask, liver)
    result = job["result"]
    row.update(
        volume_ml=round(result["measurements"]["volume_ml"], 1),
        truth_ml=round(ml(liver, spacing), 1),
        volume_error=round(result["measurements"]["volume_ml"] / ml(liver, spacing) - 1, 3),
        dice=round(d, 3),
        slices=result["slices"],
        quality=quality_row(result.get("quality"), d < BAD_DICE),
    )
    return row


def upload(client: httpx.Client, data: bytes) -> str:
    """A new open image of the series (nothing encoded yet), as the web page's upload makes."""
    image = client.post("/api/images/upload", files={"file": ("ct.zip", data)})
    image.raise_for_status()
    return image.json()["image_id"]


def service_rows(series: Path, liver: np.ndarray, spacing, threads: int, folder: Path) -> dict:
    """The web page's requests against a real server; each propagation on a freshly opened copy of the series
    (its time includes encoding every slice, as a user's first Propagate 3D does)."""
    server = ServeProcess(["--threads", str(threads)], folder)
    data = series_zip(series)
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            clicks = service_clicks(client, upload(client, data), liver)
            z = liver.shape[0] // 2  # the page opens on the middle slice
            x, y = deepest(liver[z])
            point = {"x": x, "y": y, "positive": True}
            from_click = service_propagate(
                client, upload(client, data), liver, spacing, "Propagate 3D from a click (web page's job)",
                {"action": "propagate", "z": z, "points": [point], "max_slices": None},
            )  # fmt: skip
            image_id = upload(client, data)
            from_box = service_propagate(
                client, image_id, liver, spacing, "Propagate 3D from the liver's box (web page's job)",
                {"action": "propagate", "z": z, "box": list(box_of(liver[z])), "max_slices": None},
            )  # fmt: skip
            before = client.get(f"/api/images/{image_id}/measurements").json()
            cancel = run_job(
                client, image_id, {"action": "propagate", "z": z, "points": [point]}, cancel_after=2
            )
            after = client.get(f"/api/images/{image_id}/measurements").json()
            cancel.pop("result", None)
            cancel["result_unchanged"] = before["measurements"] == after["measurements"]
    finally:
        server.stop()
    return {"clicks": clicks, "propagate_click": from_click, "propagate_box": from_box, "cancel": cancel}


# ---------------------------------------------------------------------- table
def table(result: dict) -> str:
    """The Markdown table: case | issue 20's number | today's | truth | flagged (and whether rightly)."""
    rows = []
    for row, issue in (
        (result["cli_3mm"], "1438 mL, leaks into the right kidney (slice Dice 0.31–0.60)"),
        (result["cli_dicom"], "717 mL, Dice 0.95"),
    ):
        leak = "none in the right kidney"
        if row["into_right_kidney_ml"]:
            leak = (
                f"{row['into_right_kidney_ml']} mL in the right kidney (slices {row['right_kidney_leak_slices']}, "
                f"slice Dice there {row['slice_dice_on_leak_slices']})"
            )
        low, high = row["slice_dice_range"]
        (first, last), (t0, t1) = row["slices"], row["truth_slices"]
        today = (
            f"{row['volume_ml']} mL ({row['volume_error']:+.0%}), Dice {row['dice']}, slices {first}–{last} of "
            f"{t0}–{t1}, slice Dice {low}–{high}; {leak}"
        )
        rows.append([row["case"], issue, today, f"{row['truth_ml']} mL", flag_text(row["quality"])])

    spot = result["cli_spot"]
    sizes = ", ".join(str(a["pixels"]) for a in spot["alternatives"] or [])
    today = (
        f"{spot['gives']}: {spot['volume_ml']} mL, Dice vs spot {spot['dice_vs_spot']}, vs liver "
        f"{spot['dice_vs_liver']} ({spot['share_of_liver_covered']:.0%} of the liver); on the clicked slice "
        f"{spot['slice_area_px']} px, other sizes offered {sizes or 'none'} px"
    )
    truth = (
        f"spot {spot['spot']['volume_ml']} mL, {spot['spot']['click_slice_area_px']} px on the clicked slice "
        f"({spot['spot']['mean_hu']} HU, liver {spot['spot']['liver_median_hu']:.0f} HU)"
    )
    rows.append([spot["case"], "the whole liver, 748 mL", today, truth, flag_text(spot["quality"])])

    service = result["service"]
    clicks = service["clicks"]
    n = len(clicks["slices"])
    low, high = clicks["share_of_liver_range"]
    today = (
        f"{low:.0%}–{high:.0%} of the slice's liver, Dice {clicks['dice_range'][0]}–{clicks['dice_range'][1]}"
    )
    rows.append([
        f"service: a click at the liver's deepest point on slices {list(CLICK_SLICES)}",
        "half the liver on some slices, all of it on others", today, "liver label per slice",
        f"right on {clicks['flag_right']}/{n}",
    ])  # fmt: skip
    second = [r["second_dice"] for r in clicks["slices"]]
    today = (
        f"smaller on {clicks['second_smaller']}/{n} slices; first region kept >= "
        f"{clicks['first_region_kept_min']:.0%}; Dice {min(second)}–{max(second)}"
    )
    rows.append([
        "service: a second include click on each slice", "made the mask smaller", today, "never smaller",
        f"right on {clicks['second_flag_right']}/{n}",
    ])  # fmt: skip
    for key in ("propagate_click", "propagate_box"):
        row = service[key]
        if row["state"] != "done":
            rows.append([row["case"], "", f"job {row['state']}: {row['error']}", "", ""])
            continue
        today = (
            f"{row['volume_ml']} mL ({row['volume_error']:+.0%}), Dice {row['dice']}, {row['seconds']} s, "
            f"{row['progress_updates']} progress steps seen"
        )
        issue = "163 mL, 157 s, a status line only, no cancel"
        rows.append([row["case"], issue, today, f"{row['truth_ml']} mL", flag_text(row["quality"])])
    cancel = service["cancel"]
    today = (
        f"{cancel['state']} {cancel['cancel_to_stop_s']} s after the cancel; result unchanged: "
        f"{cancel['result_unchanged']}"
    )
    rows.append(["service: Cancel a propagation after 2 slices", "no cancel", today, "", ""])
    main = markdown_table(["case", "issue 20", "today", "truth", "flagged? (right?)"], rows)
    per_slice = markdown_table(
        ["slice", "share of the liver", "Dice", "flag", "other sizes", "2nd click: Dice", "area ratio", "flag"],
        [
            [
                r["z"], f"{r['share_of_liver']:.0%}", r["dice"], flag_text(r["quality"]),
                f"{r['alternatives']['smaller']} smaller / {r['alternatives']['larger']} larger", r["second_dice"],
                f"{r['second_area_px'] / max(1, r['area_px']):.2f}", flag_text(r["second_quality"]),
            ]
            for r in clicks["slices"]
        ],
    )  # fmt: skip
    return f"{main}\n\nService clicks, per slice (DICOM series):\n\n{per_slice}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the CLI runs and the service"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    folder = args.data / "totalsegmentator-example"
    if not folder.is_dir():
        raise SystemExit(f"{folder} not found: the example CTs live in ../shared/data")
    series = folder / "example_ct_dicom"
    start, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="trust-audit-") as tmp:
        work = Path(tmp)
        (work / "cli").mkdir()
        small = load_case(folder, "example_ct_sm.nii.gz", "example_seg.nii.gz")
        dicom = load_case(folder, "example_ct_dicom", "example_seg_dicom.nii.gz")
        result = {
            "cli_3mm": cli_liver_box(
                "CLI: 3 mm CT, liver box on its largest slice, --3d", folder / "example_ct_sm.nii.gz", *small,
                args.threads, work / "cli",
            ),
            "cli_dicom": cli_liver_box(
                "CLI: DICOM series, liver box on its largest slice, --3d", series, *dicom, args.threads,
                work / "cli",
            ),
            "cli_spot": cli_spot(series, *dicom, args.threads, work / "cli"),
            "service": service_rows(series, dicom[1] == LIVER, dicom[2], args.threads, work),
        }  # fmt: skip
    result["table"] = table(result)
    result["settings"] = {"threads": args.threads, "bad_dice": BAD_DICE, "spot_contrast_hu": SPOT_CONTRAST_HU,
                          "click_slices": list(CLICK_SLICES), "seconds": round(time.perf_counter() - start, 1),
                          "load_average_before_after": [load_before[0], os.getloadavg()[0]]}  # fmt: skip
    result["environment"] = environment()
    result["environment"]["oncoseg_source"] = str(
        Path(oncoseg.__file__).parent
    )  # PYTHONPATH may name another
    result["command"] = "nice -n 19 .venv/bin/python benchmarks/trust_audit.py" + (
        f" --threads {args.threads}" if args.threads != 1 else ""
    )
    print(result["table"])
    print(f"\nwritten {write_json(result, args.out, 'trust_audit')}")


if __name__ == "__main__":
    main()

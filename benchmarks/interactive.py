"""Interactive 3D accuracy, measured the way the CVPR 2025 interactive 3D segmentation challenge does: a box,
then 5 simulated corrective clicks through Session.refine, Dice and NSD (2 mm) after every step, the Dice AUC,
and the every-slice GT-box bound beside each row (rules: oncoseg.evaluate.interactive's docstring).

    nice .venv/bin/python benchmarks/interactive.py                         # everything (hours on a busy CPU)
    nice .venv/bin/python benchmarks/interactive.py --limit 5 --datasets msd-hippocampus
    nice .venv/bin/python benchmarks/interactive.py --quick                 # 1 hippocampus case, 2 clicks

Datasets (fixed order, nothing random): MSD Hippocampus test split (labels 1 and 2 merged: the whole
hippocampus), the BraTS 2015 samples (all 4; WT, TC, ET), both TotalSegmentator example CT patients (the 3 mm
NIfTI and the DICOM series; every organ present in their label maps, which are TotalSegmentator's own
predictions, not manual labels). ``box2d`` runs on all selected cases; ``box3d`` on ``--box3d-limit`` cases per
dataset (evenly spread). The JSON is rewritten after every target, so an interrupted run keeps what it did;
``--resume`` skips the targets already in it.

Prints a progress line per target and a Markdown table; writes benchmarks/results/interactive.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from common import environment, markdown_table

from oncoseg.evaluate.interactive import (
    DEFAULT_DATASETS,
    INITIAL,
    CaseResult,
    InteractiveResult,
    dataset_cases,
    run_interactive,
)
from oncoseg.models.spec import ModelSpec
from oncoseg.volume import PropagationSettings

OUT = Path(__file__).resolve().parent / "results" / "interactive.json"
DATASETS = tuple(DEFAULT_DATASETS)


def key(result: CaseResult) -> tuple[str, str, str, str]:
    return result.dataset, result.case_id, result.target, result.initial


def write(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    temporary.replace(path)


def table(runs: dict[str, InteractiveResult]) -> str:
    """One row per dataset/target and initial prompt: mean Dice after the box and each click, AUCs, bound."""
    rows = []
    for initial, result in runs.items():
        if not result.cases:
            continue
        for by in ("target", "dataset"):
            for row in result.summary(by):
                if (
                    by == "dataset"
                    and sum(1 for r in result.summary("target") if r["group"].startswith(row["group"] + "/"))
                    < 2
                ):
                    continue  # a dataset with one target: its target row says it all
                rows.append(
                    [
                        row["group"] + (" (all targets)" if by == "dataset" else ""),
                        initial,
                        row["n"],
                        *(f"{d:.3f}" for d in row["dice"]),
                        f"{row['dice_auc']:.2f}",
                        f"{row['dice_auc_norm']:.3f}",
                        f"{row['nsd'][0]:.3f} → {row['nsd'][-1]:.3f}",
                        "–" if row["bound_dice"] is None else f"{row['bound_dice']:.3f}",
                        f"{row['clicks_that_hurt']}/{row['include_clicks'] + row['exclude_clicks']}",
                    ]
                )  # fmt: skip
    clicks = max((len(r.dice) - 1 for run in runs.values() for r in run.cases), default=0)
    header = [
        "dataset/target", "initial", "n", "Dice box", *(f"click {k}" for k in range(1, clicks + 1)),
        "Dice AUC (0-4)", "AUC/5 (0-1)", "NSD box → final", "every-slice GT box", "clicks that hurt",
    ]  # fmt: skip
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help=f"comma-separated, from {', '.join(DATASETS)}"
    )
    parser.add_argument("--limit", type=int, help="at most N cases per dataset, evenly spread (default: all)")
    parser.add_argument(
        "--initial", default="box2d,box3d", help="initial prompts to run: box2d, box3d or both"
    )
    parser.add_argument("--box3d-limit", type=int, default=4, help="cases per dataset for box3d (default 4)")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument(
        "--targets", help="comma-separated target names to run (default: the dataset's defaults)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--hippocampus-parts", action="store_true", help="also score Anterior and Posterior")
    parser.add_argument(
        "--quick", action="store_true", help="1 hippocampus case, 2 clicks, box2d (for tests)"
    )
    parser.add_argument("--resume", action="store_true", help="skip targets already in the output file")
    parser.add_argument(
        "--follow-mask",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="walk with the neighbour's mask too (the mask-prompt decoder, PropagationSettings.mask_prompt; on by "
        "default); --no-follow-mask: box-only",
    )
    parser.add_argument(
        "--no-mask-prompt-corrections",
        action="store_true",
        help="PropagationSettings.mask_prompt_corrections=False: a click's re-walk goes box-only",
    )
    parser.add_argument(
        "--split", help="the dataset split (default: the protocol's, test for the hippocampus)"
    )
    parser.add_argument(
        "--mask-prompt-min-area",
        type=float,
        help="PropagationSettings.mask_prompt_min_area (0: the mask-prompt decoder for every object)",
    )
    parser.add_argument(
        "--merge", nargs="+", type=Path, metavar="JSON", help="add the targets of other runs' files to the output "
        "file (no model run; e.g. a dataset run in a second process)",
    )  # fmt: skip
    parser.add_argument("--data", help="data root (default: shared/data beside the repository)")
    parser.add_argument("--output", type=Path, default=None, help=f"JSON path (default {OUT})")
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.limit, args.clicks, args.initial = "msd-hippocampus", 1, 2, "box2d"
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    initials = [i.strip() for i in args.initial.split(",") if i.strip()]
    unknown = [n for n in names if n not in DATASETS] + [i for i in initials if i not in INITIAL]
    if unknown:
        parser.error(f"unknown dataset or initial prompt: {', '.join(unknown)}")
    output = args.output or (OUT.with_name("interactive_quick.json") if args.quick else OUT)

    done: dict[tuple, CaseResult] = {}
    runs: dict[str, InteractiveResult] = {}  # every initial prompt in the file, kept when resuming
    invocations: list[dict] = []  # the commands that made the file (resumed and merged runs included)
    commits: list[str] = []  # the source commits of the files read (resumed or merged)
    sources = ([output] if output.exists() and (args.resume or args.merge) else []) + list(args.merge or [])
    for source in sources:
        old = json.loads(source.read_text(encoding="utf-8"))
        invocations += old.get("invocations") or [
            {"command": old.get("command"), "seconds": old.get("seconds")}
        ]
        commits += [c for c in (old.get("source_commit") or "").split(", ") if c and c not in commits]
        for initial, run in old.get("runs", {}).items():
            runs.setdefault(initial, InteractiveResult([], {}))
            selection = {
                **run.get("settings", {}).get("selection", {}),
                **runs[initial].settings.get("selection", {}),
            }
            runs[initial].settings.update({**run.get("settings", {}), "selection": selection})
            for record in run["cases"]:
                result = CaseResult.from_dict(record)
                if key(result) not in done:
                    done[key(result)] = result
                    runs[initial].cases.append(result)
    for initial in [] if args.merge else initials:
        runs.setdefault(initial, InteractiveResult([], {}))

    started = time.perf_counter()
    command = " ".join(["benchmarks/interactive.py", *(argv if argv is not None else sys.argv[1:])])
    count = 0

    def save() -> None:
        seconds = round(time.perf_counter() - started, 1)
        document = {
            "invocations": [*invocations, {"command": command, "seconds": seconds}],
            "command": command,
            "environment": environment(),
            # set when the run uses a clean export of a commit (others' uncommitted edits left out)
            "source_commit": os.environ.get("ONCOSEG_SOURCE_COMMIT") or ", ".join(commits) or None,
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
            "protocol": (
                "CVPR 2025 interactive 3D segmentation challenge rules as in oncoseg.evaluate.interactive: "
                "box2d = GT 2D box on the largest slice + propagation; box3d = GT 2D box on the middle slice "
                "(z_min+z_max)//2, every answer bounded by the target's 3D box; then up to 5 clicks at the "
                "EDT centre (mm) of the largest 26-connected error region through Session.refine; Dice, NSD "
                "at 2 mm (0 when Dice <= 0.2); dice_auc = trapezoid over clicks 1-5 (0-4), dice_auc_norm = "
                "trapezoid over box + clicks / clicks (0-1); bound = GT box on every slice, no propagation"
            ),
            "datasets": {
                "msd-hippocampus": "test split (52 cases), target 'whole' = labels 1+2"
                + (" plus Anterior, Posterior" if args.hippocampus_parts else ""),
                "brats2015": "all 4 samples, WT (1-4), TC (1, 3, 4), ET (4)",
                "totalsegmentator-example": "ct (3 mm NIfTI) and ct_dicom (DICOM series): every organ present; "
                "labels are TotalSegmentator predictions, not manual",
            },
            "limit": args.limit,
            "box3d_limit": args.box3d_limit,
            "seconds": seconds,
            "seconds_total": round(sum(i.get("seconds") or 0 for i in invocations) + seconds, 1),
            "runs": {i: r.as_dict() for i, r in runs.items()},
        }
        write(output, document)

    def progress(i: int, result: CaseResult) -> None:
        nonlocal count
        count += 1
        runs[result.initial].cases.append(result)
        runs[result.initial].settings.update(last_settings[result.initial])
        save()
        kinds = "".join(
            "-" if c is None else ("+" if c.positive else "x") + ("!" if c.note else "")
            for c in result.clicks
        )
        print(
            f"[{count}] {result.initial} {result.dataset}/{result.case_id}/{result.target}: Dice "
            f"{' '.join(f'{d:.3f}' for d in result.dice)} AUC {result.dice_auc:.2f} bound "
            f"{'-' if result.bound_dice is None else f'{result.bound_dice:.3f}'} clicks {kinds} "
            f"({result.seconds + result.bound_seconds:.0f} s, {time.perf_counter() - started:.0f} s total)",
            flush=True,
        )  # fmt: skip

    if args.merge:
        save()
        print(table(runs))
        print(f"merged {len(done)} targets into {output}")
        return 0
    predictor = ModelSpec(backend="litemedsam", threads=args.threads).build_predictor(cache_slices=1024)
    split = {} if args.split is None else {"split": args.split}
    last_settings: dict[str, dict] = {}
    for initial in initials:
        for name in names:
            limit = (
                args.limit if initial == "box2d" else min(args.limit or args.box3d_limit, args.box3d_limit)
            )
            targets = (
                tuple(t.strip() for t in args.targets.split(",") if t.strip())
                if args.targets
                else ("whole", "Anterior", "Posterior")
                if name == "msd-hippocampus" and args.hippocampus_parts
                else ...
            )
            cases = (
                c for c in dataset_cases(name, limit=limit, targets=targets, root=args.data, **split)
                if (c.dataset, c.case_id, c.target, initial) not in done
            )  # fmt: skip
            bound = initial == "box2d"  # the bound does not depend on the initial prompt: measured once
            propagation = PropagationSettings(
                **({} if args.follow_mask is None else {"mask_prompt": args.follow_mask}),
                **(
                    {}
                    if args.mask_prompt_min_area is None
                    else {"mask_prompt_min_area": args.mask_prompt_min_area}
                ),
                mask_prompt_corrections=not args.no_mask_prompt_corrections,
            )
            last_settings[initial] = run_interactive(
                [], predictor, clicks=args.clicks, initial=initial, bound=bound, propagation=propagation
            ).settings
            runs[initial].settings.setdefault("selection", {})[name] = (
                f"{limit} cases evenly spread" if limit else "all cases"
            ) + (f", targets {args.targets}" if args.targets else "")
            run_interactive(
                cases, predictor, clicks=args.clicks, initial=initial, progress=progress, bound=bound,
                propagation=propagation,
            )  # fmt: skip
    save()
    print()
    print(table(runs))
    print(f"\n{time.perf_counter() - started:.0f} s; wrote {output}")
    means = [r.dice_auc for run in runs.values() for r in run.cases]
    return 0 if means and np.isfinite(means).all() else 1


if __name__ == "__main__":
    sys.exit(main())

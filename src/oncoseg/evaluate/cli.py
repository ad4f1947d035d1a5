"""``oncoseg evaluate``: the subcommand's arguments and output (kept here; `oncoseg.cli` wires it in). The work is
`oncoseg.evaluate.run_evaluation` and, for ``--protocol interactive``, `run_interactive_evaluation`."""

from __future__ import annotations

import argparse
import sys

from oncoseg.cli import add_model_options
from oncoseg.errors import OncoSegError

EPILOG = """\
examples:
  oncoseg evaluate kvasir-seg                          # Kvasir-SEG test split, ground-truth boxes
  oncoseg evaluate busi --split all --protocol box:jitter=0.1
  oncoseg evaluate msd-hippocampus --modes propagate --limit 20 -o runs/hippo
  oncoseg evaluate kvasir-seg --checkpoint finetuned.pth -o runs/kvasir-ft
  oncoseg evaluate kvasir-seg --devices 2              # two processes (Lightning DDP)
  oncoseg evaluate msd-hippocampus --protocol interactive --clicks 5 --limit 5   # box + 5 clicks, 3D datasets
  oncoseg evaluate --replay runs/busi -o runs/busi-again   # the same cases, prompts and model settings again
  oncoseg evaluate busi --prompts runs/busi/cases.jsonl --checkpoint ft.pth   # another model, the same prompts

Metrics per case: Dice, IoU, normalised surface Dice at --tolerance, HD95 (mm for volumes, pixels for
pictures; HD95 is undefined, and counted as such, when exactly one of prediction and truth is empty).
--protocol interactive (3D datasets; the CVPR 2025 interactive challenge's rules, see
oncoseg.evaluate.interactive): a GT box, then --clicks simulated corrective clicks; Dice and NSD after every
step and the area under the Dice-per-click curve, written to OUT/interactive.json (no resume, no report).
Every row of cases.jsonl/cases.csv holds its exact prompt (boxes, clicks in order, text, slice; the format is in
docs/evaluation.md); --prompts runs from such a file (an earlier run's or another tool's) instead of --protocol.
"""


def add_parser(commands) -> argparse.ArgumentParser:
    evaluate = commands.add_parser(
        "evaluate",
        help="score the model on a labelled dataset split (Dice, IoU, NSD, HD95) and write a report",
        description="Run the model over a dataset split with prompts made from the ground truth, score every "
        "case and write cases.csv, summary.json and report.md/.html (box plots, best/median/worst overlays) to "
        "--out. Interrupted runs resume: cases already in --out are skipped.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument(
        "dataset",
        nargs="?",
        help="registry name, e.g. kvasir-seg, busi, msd-hippocampus (see `oncoseg datasets`); "
        "not needed with --replay",
    )
    evaluate.add_argument(
        "--split", default="test", choices=("train", "val", "test", "all"), help="fixed split (default: test)"
    )
    evaluate.add_argument(
        "--protocol",
        default="box",
        metavar="P",
        help="box, box:jitter=0.1, points, points:3, text or interactive (default: box)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of jittered boxes and random points")
    evaluate.add_argument(
        "--prompts",
        metavar="PATH",
        help="use the prompts recorded in PATH (an evaluation folder, its cases.jsonl or cases.csv, or another "
        "tool's file in that format) instead of --protocol: only the cases, targets and modes it names",
    )
    evaluate.add_argument(
        "--replay",
        metavar="RUN_DIR",
        help="run the evaluation in RUN_DIR again (its dataset, split, modes, model settings and recorded "
        "prompts; --data may point to the data elsewhere); output to --out (default: RUN_DIR-replay)",
    )
    evaluate.add_argument(
        "--modes",
        default="propagate,per_slice",
        help="3D datasets: propagate and/or per_slice (default: both)",
    )
    evaluate.add_argument(
        "--tolerance", type=float, default=2.0, help="NSD tolerance in mm (pixels for 2D pictures); default 2"
    )
    evaluate.add_argument("--limit", type=int, help="at most N cases, evenly spread over the split")
    evaluate.add_argument(
        "--data", help="data root (default: $ONCOSEG_DATA, else shared/data beside the repository)"
    )
    evaluate.add_argument("-o", "--out", help="output folder (default: eval-output/DATASET-SPLIT-PROTOCOL)")
    evaluate.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    add_model_options(evaluate, precisions=("auto", "fp32", "bf16"))
    evaluate.add_argument(
        "--devices", type=int, default=1, help="processes per machine through Lightning DDP (default 1)"
    )
    evaluate.add_argument("--num-nodes", type=int, default=1, help="machines for Lightning DDP (default 1)")
    evaluate.add_argument(
        "--accelerator", default="cpu", help="Lightning accelerator for --devices > 1 (cpu, gpu, auto)"
    )
    evaluate.add_argument("--no-report", action="store_true", help="skip report.md/report.html")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    evaluate.add_argument(
        "--clicks",
        type=int,
        default=5,
        help="--protocol interactive: corrective clicks after the box (default 5)",
    )
    evaluate.add_argument(
        "--initial",
        choices=("box2d", "box3d"),
        default="box2d",
        help="--protocol interactive: a 2D box on the largest slice (default) or the challenge's 3D box",
    )
    return evaluate


def run(args: argparse.Namespace) -> int:
    if args.replay:
        return run_replay(args)
    if not args.dataset:
        raise OncoSegError("give a dataset (see `oncoseg datasets`), or --replay RUN_DIR")
    if args.prompts and args.protocol.strip().lower() != "box":
        raise OncoSegError("--prompts replaces --protocol: give one of them")
    if args.protocol.strip().lower() == "interactive":
        return run_interactive(args)
    from oncoseg.evaluate import run_evaluation

    summary, out = run_evaluation(
        args.dataset, args.out, args.split, args.protocol, seed=args.seed, weights=args.weights,
        overwrite=args.overwrite, progress=not args.quiet, devices=args.devices, num_nodes=args.num_nodes,
        accelerator=args.accelerator, modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        tolerance=args.tolerance, backend=args.backend, checkpoint=args.checkpoint, precision=args.precision,
        encoder=args.encoder, limit=args.limit, data_root=args.data, prompts=args.prompts,
    )  # fmt: skip
    if summary is None:  # a DDP worker process: process 0 reports
        return 0
    return report(summary, out, args)


def run_replay(args: argparse.Namespace) -> int:
    """``--replay RUN_DIR``: that folder's settings and prompts again (one process)."""
    import json
    from pathlib import Path

    from oncoseg.evaluate.runner import replay

    source = Path(args.replay)
    run_file = source / "run.json"
    if not run_file.is_file():
        raise OncoSegError(f"no run.json in {source}: --replay needs the folder of an `oncoseg evaluate` run")
    recorded = json.loads(run_file.read_text(encoding="utf-8")).get("dataset")
    if args.dataset and args.dataset != recorded:
        raise OncoSegError(f"{source} evaluated {recorded}, not {args.dataset}: leave the dataset out")
    if args.devices * args.num_nodes > 1:
        raise OncoSegError("--replay runs in one process: leave out --devices/--num-nodes")
    out = Path(args.out) if args.out else source.with_name(source.name + "-replay")
    summary = replay(source, out, overwrite=args.overwrite, progress=not args.quiet, data_root=args.data)
    return report(summary, out, args)


def report(summary: dict, out, args: argparse.Namespace) -> int:
    """Print the summary and write the report (unless --no-report)."""
    print(format_summary(summary))
    print(f"\nper-case results: {out / 'cases.csv'}")
    if not args.no_report:
        from oncoseg.evaluate.report import write_report

        _markdown, html = write_report(out)
        print(f"report: {html}")
    return 0


def run_interactive(args: argparse.Namespace) -> int:
    from oncoseg.evaluate import run_interactive_evaluation

    if args.devices * args.num_nodes > 1:
        raise OncoSegError("--protocol interactive runs in one process: leave out --devices/--num-nodes")

    def progress(i: int, result) -> None:
        if not args.quiet:
            print(f"{i:>4} {result.case_id}/{result.target}: Dice {result.dice[0]:.3f} after the box, "
                  f"{result.dice[-1]:.3f} after {result.n_clicks} click(s)", file=sys.stderr)  # fmt: skip

    result, path = run_interactive_evaluation(
        args.dataset, args.out, args.split, clicks=args.clicks, initial=args.initial, limit=args.limit,
        data_root=args.data, tolerance=args.tolerance, backend=args.backend, weights=args.weights,
        checkpoint=args.checkpoint, precision=args.precision, encoder=args.encoder, progress=progress,
    )  # fmt: skip
    print(format_interactive(result, args.dataset, args.split))
    print(f"\nper-case results: {path}")
    return 0


def format_summary(summary: dict) -> str:
    """The summary groups as a plain table (what `oncoseg evaluate` prints)."""
    run = summary["run"]
    lines = [f"{run['dataset']} ({run['split'] or 'all'} split), prompt: {run['prompt']}"]
    lines.append(
        f"{'mode':<10} {'target':<14} {'category':<12} {'n':>4}  {'Dice mean ± sd':<16} {'NSD':>6} {'HD95':>8}"
    )
    for group in summary["groups"]:
        dice, nsd, hd95 = group["dice"], group["nsd"], group["hd95"]
        text = f"{dice['mean']:.3f} ± {dice['sd']:.3f}" if dice["n"] else "–"
        lines.append(
            f"{group['mode']:<10} {group['target']:<14} {group['category']:<12} {dice['n']:>4}  {text:<16} "
            f"{nsd.get('mean', float('nan')):>6.3f} {hd95.get('median', float('nan')):>8.2f}"
        )
    if summary.get("paper_dice") is not None:
        lines.append(f"paper (preprint Table 7, prompts not stated): Dice {summary['paper_dice']:.3f}")
    return "\n".join(lines)


def format_interactive(result, dataset: str, split: str) -> str:
    """The interactive protocol's mean curves per target as a plain table: Dice after the box and each click,
    the challenge's Dice AUC, the AUC over the whole curve / clicks, NSD at the end and the every-slice box."""
    settings = result.settings
    lines = [f"{dataset} ({split} split), interactive: {settings['initial']} + {settings['clicks']} click(s)"]
    curve = "Dice: box, click 1.." if settings["clicks"] else "Dice: box"
    width = max(len(curve), 6 * (settings["clicks"] + 1) - 1)
    lines.append(f"{'target':<24} {'n':>4}  {curve:<{width}} {'AUC':>5} {'AUC/n':>6} {'NSD':>6} {'bound':>6}")
    for row in result.summary("target"):
        dice = " ".join(f"{d:.3f}" for d in row["dice"])
        bound = "–" if row["bound_dice"] is None else f"{row['bound_dice']:.3f}"
        lines.append(
            f"{row['group']:<24} {row['n']:>4}  {dice:<{width}} {row['dice_auc']:>5.2f} "
            f"{row['dice_auc_norm']:>6.3f} {row['nsd'][-1]:>6.3f} {bound:>6}"
        )
    return "\n".join(lines)

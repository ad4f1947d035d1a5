"""``oncoseg contour``: the subcommand's arguments and runner (kept here; `oncoseg.cli` wires it in)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from oncoseg.errors import OncoSegError

EPILOG = """\
examples:
  oncoseg contour --list                                   # known organs, and which the atlas/model support
  oncoseg contour ct_dicom_folder/ -o oars.nii.gz          # label map + oars.json (TG-263 names, colours)
  oncoseg contour ct_dicom_folder/ -o oars.dcm --output-type rtstruct
  oncoseg contour ct.nii.gz --organs Liver,Spleen,kidney_left -o oars.nii.gz --atlas my_atlas/
  oncoseg contour ct_dicom_folder/ --engine nnunet --model NNUNET_MODEL_DIR -o oars.dcm --output-type rtstruct

How it works: the atlas CT is registered to the CT (rigid/affine, then deformable), its labels are carried
over, and compact organs are refined slice by slice by the model (a box from the carried label). Organs the
model does not refine keep the registered atlas label. An organ outside the scan, or one the model disagrees
with, is not drawn: the report and the JSON sidecar list it with the reason. Each organ drawn has a heuristic
confidence (in the report, the sidecar and the RTSTRUCT's ROI description); the lowest come first under
REVIEW FIRST. The default atlas is TotalSegmentator's example
(from $ONCOSEG_DATA, else shared/data beside the repository): a demonstration atlas of ONE patient whose labels
are another tool's predictions. Contours from it are starting points for review, not clinical contours (see docs/contour.md).
An atlas folder holds atlas.json: {"image": "ct.nii.gz", "labels": "labels.nii.gz", "names": {"1": "liver"}}.
"""


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "contour",
        help="contour organs at risk on a CT (atlas registration + model refinement)",
        description="Contour the organs at risk of a CT (NIfTI/NRRD/MHA or a DICOM series folder) and write a "
        "label map with a JSON sidecar, or an RTSTRUCT over the input DICOM series.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", nargs="?", help="CT file or DICOM series folder")
    parser.add_argument(
        "-o", "--output", help="output: .nii.gz/.nrrd/.mha label map, or .dcm for --output-type rtstruct"
    )
    parser.add_argument(
        "--output-type",
        choices=("nifti", "rtstruct"),
        default="nifti",
        help="label map + JSON (default) or RTSTRUCT",
    )
    parser.add_argument(
        "--organs", help="comma-separated TG-263 names or aliases (default: all the atlas has)"
    )
    parser.add_argument(
        "--atlas", help="atlas folder (default: $ONCOSEG_ATLAS, else the TotalSegmentator example)"
    )
    add_engine_arguments(parser)
    parser.add_argument("--list", action="store_true", help="list the known organs and how each is contoured")
    parser.add_argument("--no-refine", action="store_true", help="atlas labels only (no model; faster)")
    parser.add_argument(
        "--checkpoint",
        help="fine-tuned weights of the refining model: a LoRA adapter file, a full state dict, or a name "
        "from `oncoseg train`",
    )
    parser.add_argument(
        "--registration-spacing",
        type=float,
        default=4.0,
        metavar="MM",
        help="registration grid (default 4 mm)",
    )
    parser.add_argument("--json", action="store_true", help="print the per-organ report as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine``, ``--model``, ``--label-map`` (also used by ``oncoseg assistant``)."""
    parser.add_argument(
        "--engine",
        choices=("atlas", "nnunet"),
        default="atlas",
        help="atlas (default), or nnunet: a trained nnU-Net v2 model folder you bring (--model; docs/nnunet.md)",
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="DIR",
        help="--engine nnunet: an nnU-Net v2 model folder (repeat for several, e.g. TotalSegmentator's parts)",
    )
    parser.add_argument(
        "--label-map",
        metavar="JSON",
        help="--engine nnunet: label value or name -> TG-263 name (null leaves a label out)",
    )


def check_engine_arguments(args: argparse.Namespace) -> None:
    """One-line errors for options that belong to the other engine."""
    if args.engine == "nnunet" and (args.atlas or args.checkpoint or args.no_refine):
        raise OncoSegError(
            "--atlas, --checkpoint and --no-refine are for the atlas engine, not --engine nnunet"
        )
    if args.engine != "nnunet" and (args.model or args.label_map):
        raise OncoSegError("a model folder and a label map are for the nnunet engine (--engine nnunet)")


def run(args: argparse.Namespace) -> int:
    from oncoseg.contour import contour, load_atlas, organ_table, sidecar_path

    check_engine_arguments(args)
    if args.engine == "nnunet" and args.list:
        return list_model_labels(args)
    if args.list:
        try:
            atlas = load_atlas(args.atlas)
        except OncoSegError as error:
            print(f"oncoseg: note: {error}", file=sys.stderr)
            atlas = None
        rows = organ_table(atlas)
        if args.json:
            print(json.dumps({"atlas": atlas.source if atlas else None, "organs": rows}, indent=2))
            return 0
        print(f"atlas: {atlas.source if atlas else 'none found'}")
        print(f"{'TG-263 name':<17} {'description':<28} {'colour':<13} status")
        for row in rows:
            color = ",".join(str(c) for c in row["color"])
            print(f"{row['name']:<17} {row['description']:<28} {color:<13} {row['status']}")
        supported = sum(r["status"] != "not in atlas" for r in rows)
        print(f"{len(rows)} organs known; {supported} supported by this atlas and the CT numbers")
        return 0
    if not args.input or not args.output:
        raise OncoSegError("give a CT and -o OUTPUT (or --list): oncoseg contour CT -o oars.nii.gz")
    if args.output_type == "rtstruct" and not Path(args.input).is_dir():
        raise OncoSegError("--output-type rtstruct needs a DICOM series folder as input")
    organs = [o.strip() for o in args.organs.split(",") if o.strip()] if args.organs else None
    result = contour(
        args.input,
        organs,
        atlas=args.atlas,
        refine=not args.no_refine,
        checkpoint=args.checkpoint,
        registration_spacing=args.registration_spacing,
        progress=not args.quiet,
        engine=args.engine,
        model=args.model,
        label_map=args.label_map,
    )
    if not args.quiet:
        print(f"writing {args.output} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    path = result.save(args.output, args.output_type)
    written = time.perf_counter() - started
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print_report(summary)
    print(f"wrote {path} and {sidecar_path(path).name} in {summary['timings_s']['total'] + written:.1f} s")
    return 0


def print_report(summary: dict) -> None:
    """The console report: organs to review first, every organ drawn, every organ asked for and not drawn."""
    organs = summary["organs"]
    if summary.get("review_first"):
        print("REVIEW FIRST (lowest confidence first):")
        for name in summary["review_first"]:
            confidence = organs[name]["confidence"]
            print(f"  {name:<17} {confidence['estimate']:.2f}  {', '.join(confidence['reasons'])}")
    print(f"{'organ':<17} {'volume mL':>10} {'atlas mL':>10} {'confidence':>10}  method")
    for name, row in organs.items():
        confidence = row.get("confidence")
        shown = "" if not confidence else f"{confidence['estimate']:.2f}{'*' if confidence['review'] else ''}"
        atlas = "" if row["atlas_volume_ml"] is None else f"{row['atlas_volume_ml']:.1f}"
        print(f"{name:<17} {row['volume_ml']:>10.1f} {atlas:>10} {shown:>10}  {row['method']}")
    if summary.get("not_drawn"):
        print(f"NOT DRAWN ({len(summary['not_drawn'])}):")
        for name, reason in summary["not_drawn"].items():
            print(f"  {name:<17} {reason}")
    if summary.get("unmapped_labels"):  # nnU-Net labels with no TG-263 name: reported, not drawn
        print(f"NO TG-263 NAME, NOT DRAWN ({len(summary['unmapped_labels'])}; name them with --label-map):")
        for label, volume in summary["unmapped_labels"].items():
            print(f"  {label:<17} {volume:.1f} mL")
    print(
        "confidence: a heuristic order of review, not a calibrated probability (* = review; docs/contour.md)"
    )


def list_model_labels(args: argparse.Namespace) -> int:
    """``--list --engine nnunet --model DIR``: each label of the model folder(s) and the name it becomes."""
    from oncoseg.contour.nnunet import label_table

    if not args.model:
        raise OncoSegError("--engine nnunet needs --model DIR: a trained nnU-Net v2 model folder")
    rows = label_table(args.model, args.label_map)
    if args.json:
        print(json.dumps({"labels": rows}, indent=2))
        return 0
    print(f"{'model':<28} {'value':>5}  {'label':<28} {'structure':<17} how")
    for row in rows:
        print(
            f"{row['model']:<28} {row['value']:>5}  {row['label']:<28} {row['name'] or '-':<17} {row['status']}"
        )
    print(f"{sum(r['name'] is not None for r in rows)} of {len(rows)} labels get a structure name")
    return 0

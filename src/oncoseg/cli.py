"""The ``oncoseg`` command: a thin shell over the Python API (``oncoseg.api``, ``oncoseg.demo``, the evaluation,
training, DICOM and service packages). It parses arguments, calls the core and formats what comes back."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from oncoseg import __version__
from oncoseg.errors import OncoSegError
from oncoseg.modality import MODALITIES

EPILOG_SEGMENT = """\
prompts (pixel coordinates; x = column, y = row, z = slice index of a volume, counted from 0):
  --box X0,Y0,X1,Y1[,Z]      a box around the object (repeat for several objects: one mask each)
  --point X,Y[,Z][:neg]      a click inside the object; ':neg' marks a point to exclude
  --text "polyp"             every instance of a named structure (--slice Z or --3d on volumes); the default
                             model knows the concepts `oncoseg concepts` lists, --backend sam3 any text
  --exemplar X0,Y0,X1,Y1[,Z] a box around one example: every similar instance (--backend sam3; with --text too)

one object on several slices: --object NAME, then its boxes/points on any slices (at most one box per slice).
  The slice of its first box (without a box: of its first point) starts the object; each further slice's
  prompt corrects it there, as `oncoseg refine` does: that slice becomes an anchor and, with --3d, the walk
  between anchors is done again. Repeat --object for more objects (labels in that order); NAME is also the
  structure name of dicom_seg/rtstruct outputs. Without --object, every --box is an object of its own.

examples:
  oncoseg segment polyp.jpg --box 120,80,300,260 -o polyp_mask.png --overlay polyp_overlay.png
  oncoseg segment ct.nii.gz --box 14,16,80,76,24 --3d -o liver.nii.gz --json
  oncoseg segment ct.nii.gz --3d --object liver --box 14,16,80,76,24 --box 20,22,70,64,12 \\
      --object tumour --box 40,30,52,44,20 -o organs.nii.gz
  oncoseg segment ct_dicom_folder/ --box 200,180,320,300,45 --modality ct -o lesion.nii.gz
  oncoseg segment ct_dicom_folder/ --box 200,180,320,300,45 --3d --output-type rtstruct --names 1=GTV -o gtv_rt.dcm
  oncoseg segment polyp.jpg --text polyp -o polyps.png --overlay polyps_overlay.png
  oncoseg segment ct.nii.gz --backend sam3 --weights ~/sam3 --text "liver tumour" --3d -o tumours.nii.gz
  oncoseg segment ct.nii.gz --backend sam3 --weights ~/sam3 --box 14,16,80,76,24 --3d -o liver.nii.gz

Find coordinates with `oncoseg info IMAGE` (shape is printed as z, y, x) or any viewer that shows pixel indices
of the image as stored (volumes are read in LPS orientation: x to the patient's left, y to posterior, z up).
Exit code 2 and one line on stderr for bad input (unreadable file, prompt outside the image, empty result);
no output file is written unless the whole run succeeds.
"""


EPILOG_REFINE = """\
corrections (pixel coordinates as for `oncoseg segment`; on a volume each names its slice Z):
  --point X,Y,Z              include this pixel in the object
  --point X,Y,Z:neg          exclude it
  --box X0,Y0,X1,Y1,Z        segment the object on slice Z again inside this box (with points on Z: together)
Prompts on several slices are applied slice by slice, the slice of the first box (else point) first.

On a volume, when the object spans several slices (or with --3d), the walk starts again from each corrected
slice in both directions, up to the first slice it segments as the mask has it (IoU >= 0.9): the slices beyond
keep their masks. Where the walk stops instead (the object ended or leaked), the slices beyond are cleared.
With --no-3d only the corrected slices change.
The mask's other labels are kept as they are. MASK must lie on INPUT's grid: it is never resampled.

examples:
  oncoseg segment ct.nii.gz --box 14,16,80,76,24 --3d -o liver.nii.gz
  oncoseg refine ct.nii.gz --mask liver.nii.gz --point 40,30,27:neg -o liver_fixed.nii.gz --json
  oncoseg refine ct.nii.gz --mask organs.nii.gz --label 2 --box 60,20,90,50,12 --no-3d -o organs_fixed.nii.gz
  oncoseg refine polyp.jpg --mask polyp_mask.png --point 200,180 -o polyp_fixed.png --overlay fixed.png

Exit code 2 and one line on stderr for bad input (a mask on another grid, a label not in the mask, a prompt
outside the image); no output file is written unless the whole run succeeds.
"""


EPILOG_EVALUATE = """\
examples:
  oncoseg evaluate kvasir-seg                          # Kvasir-SEG test split, ground-truth boxes
  oncoseg evaluate busi --split all --protocol box:jitter=0.1
  oncoseg evaluate msd-hippocampus --modes propagate --limit 20 -o runs/hippo
  oncoseg evaluate kvasir-seg --checkpoint finetuned.pth -o runs/kvasir-ft
  oncoseg evaluate kvasir-seg --devices 2              # two processes (Lightning DDP)

Metrics per case: Dice, IoU, normalised surface Dice at --tolerance, HD95 (mm for volumes, pixels for
pictures; HD95 is undefined, and counted as such, when exactly one of prediction and truth is empty).
"""


EPILOG_EXPORT = """\
examples:
  oncoseg export rtstruct liver.nii.gz kidneys.nii.gz --reference ct_dicom/ -o contours.dcm \\
      --names Liver,Kidneys
  oncoseg export seg labels.nii.gz --reference ct_dicom/ -o seg.dcm --names 1=Liver,2=Kidney_L,3=Kidney_R
  oncoseg export rtstruct seg.nii.gz --reference ct_dicom/ -o rt.dcm --names label_map.json:total
  oncoseg export nifti manual_contours.dcm --reference ct_dicom/ -o truth.nii.gz   # + truth.json (names)
  oncoseg export nifti seg.dcm --reference ct_dicom/ -o masks/                     # one .nii.gz per structure

A label map gives one structure per label; a binary (0/1) mask one structure named by --names or its file
stem. Names become AAPM TG-263 names where known (kidney_left -> Kidney_L). RTSTRUCT contours: one closed
planar contour per boundary and slice (holes are separate contours, filled even-odd); SEG: binary, one segment
per structure. Check outputs with `dciodvfy FILE` (dicom3tools).
"""


EPILOG_TRAIN = """\
example CONFIG (relative paths are taken from the config file's folder):
  name: brain-lora
  output: runs/brain-lora
  seed: 0
  batch_size: 4
  lora: {r: 16, alpha: 32, dropout: 0.1, unfreeze: [mask_decoder]}
  phases:
    - name: brain                # registered as checkpoint "brain" and "latest"
      datasets: [msd-hippocampus]
      epochs: 3                  # omit for the paper's calibration by dataset size

then: oncoseg evaluate msd-hippocampus --checkpoint brain
Other keys: lr, weight_decay, accumulate, patience, precision (auto|32-true|bf16-mixed|16-mixed),
accelerator, devices, num_nodes, max_steps_per_epoch, loggers [csv, tensorboard, wandb], data_root.
"""


WEIGHTS_HELP = (
    "SAM3 only: the folder of the facebook/sam3 download (Hugging Face layout; default $ONCOSEG_SAM3_WEIGHTS). "
    "The weights are gated: request access on huggingface.co/facebook/sam3 first (see docs/sam3.md)"
)
CHECKPOINT_HELP = "fine-tuned weights: a LoRA adapter file, a full state dict, or a name from `oncoseg train`"


# commands whose parser and code live in their own package: each module has add_parser(commands) and run(args)
SUBCOMMAND_MODULES = {
    "contour": "oncoseg.contour.cli",
    "assistant": "oncoseg.assistant.cli",
    "napari": "oncoseg.napari_plugin.cli",
    "concepts": "oncoseg.concepts.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oncoseg",
        description="Promptable medical image segmentation (LiteMedSAM bundled; runs on CPU, nothing downloaded).",
    )
    parser.add_argument("--version", action="version", version=f"oncoseg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = commands.add_parser(
        "segment",
        help="segment an image or volume from boxes/points and measure the result",
        description="Segment INPUT (NIfTI, NRRD/MHA, a DICOM series folder, PNG/JPG/TIFF) from box and point "
        "prompts; prints volume/area and RECIST diameters.",
        epilog=EPILOG_SEGMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_prompt_options(seg, "prompt")
    seg.add_argument(
        "--object", action=StartObject, metavar="NAME", help="the prompts after it are one object"
    )
    seg.add_argument(
        "--3d", dest="volume", action="store_true", help="propagate through the volume from the prompt"
    )
    seg.add_argument(
        "--text",
        help="text prompt: segment every instance of this structure (default model: see oncoseg concepts)",
    )
    seg.add_argument(
        "--exemplar", action="append", default=[], metavar="X0,Y0,X1,Y1[,Z]", help="box exemplar (SAM3)"
    )
    seg.add_argument("--slice", type=int, metavar="Z", help="slice of a volume for --text without --3d")
    seg.add_argument(
        "--threshold", type=float, help="confidence needed to keep an instance of --text (default 0.5)"
    )
    add_model_options(seg)
    add_output_options(seg)

    refine = commands.add_parser(
        "refine",
        help="correct a saved mask with clicks or a box and measure the result",
        description="Correct one object of MASK (a label map saved by `oncoseg segment` or any tool, on INPUT's "
        "grid) with include/exclude clicks or a box on one or more slices; writes the corrected label map and "
        "prints volume/area and RECIST diameters of its objects.",
        epilog=EPILOG_REFINE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_prompt_options(refine, "correction")
    refine.add_argument("--mask", required=True, help="the label map to correct (.nii.gz, .nrrd, .mha, .png)")
    refine.add_argument(
        "--label", type=int, metavar="N", help="the object to correct (needed if MASK holds several)"
    )
    refine.add_argument(
        "--3d",
        dest="volume",
        action=argparse.BooleanOptionalAction,
        help="walk again from the corrected slice (default: when the object spans several slices)",
    )
    add_model_options(refine)
    add_output_options(refine)

    info = commands.add_parser("info", help="show shape, spacing, orientation and modality of an image")
    info.add_argument("input", help="image file or DICOM series folder")
    info.add_argument("--json", action="store_true", help="print JSON")

    datasets = commands.add_parser(
        "datasets",
        help="list the datasets Onco-Seg knows and which are found locally",
        description="List the benchmark datasets (the paper's and ours), their modality, target and layout, "
        "and whether they are found under the data root (--root, else $ONCOSEG_DATA, else shared/data beside "
        "the repository).",
    )
    datasets.add_argument("--root", help="folder holding the datasets")
    datasets.add_argument("--json", action="store_true", help="print JSON")

    evaluate = commands.add_parser(
        "evaluate",
        help="score the model on a labelled dataset split (Dice, IoU, NSD, HD95) and write a report",
        description="Run the model over a dataset split with prompts made from the ground truth, score every "
        "case and write cases.csv, summary.json and report.md/.html (box plots, best/median/worst overlays) to "
        "--out. Interrupted runs resume: cases already in --out are skipped.",
        epilog=EPILOG_EVALUATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument(
        "dataset", help="registry name, e.g. kvasir-seg, busi, msd-hippocampus (see `oncoseg datasets`)"
    )
    evaluate.add_argument(
        "--split", default="test", choices=("train", "val", "test", "all"), help="fixed split (default: test)"
    )
    evaluate.add_argument(
        "--protocol",
        default="box",
        metavar="P",
        help="box, box:jitter=0.1, points, points:3 or text (default: box)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of jittered boxes and random points")
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

    train = commands.add_parser(
        "train",
        help="fine-tune the model with LoRA in phases described by a YAML file",
        description="Fine-tune LiteMedSAM with LoRA (r=16, alpha=32, dropout 0.1 on the image encoder's attention; "
        "mask decoder trained) over the phases of CONFIG, with Lightning. Finished phases are skipped, an "
        "interrupted phase resumes from its last.ckpt, and each finished phase registers its adapter under its "
        "name and as 'latest' for --checkpoint NAME.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="YAML file: name, output, phases (see the example below)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    export = commands.add_parser(
        "export",
        help="convert masks to DICOM-RT Structure Set / DICOM SEG over a DICOM series, or back to NIfTI",
        description="rtstruct|seg: write MASK files (NIfTI/NRRD/MHA label maps or binary masks on the grid of the "
        "--reference series) as one RTSTRUCT or SEG file. nifti: read an RTSTRUCT or SEG file (e.g. manual "
        "contours) back onto the --reference series as NIfTI. Masks are never resampled: one that does not fit "
        "the series (shape, spacing, origin, orientation) is refused.",
        epilog=EPILOG_EXPORT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("format", choices=("rtstruct", "seg", "nifti"), help="what to write")
    export.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="mask files (rtstruct, seg) or one RTSTRUCT/SEG file"
    )
    export.add_argument("--reference", required=True, metavar="DICOM_DIR", help="the source CT/MR series")
    export.add_argument(
        "-o", "--output", required=True, help="output file (.dcm; nifti: .nii.gz, or a folder: one mask each)"
    )
    export.add_argument(
        "--names",
        metavar="SPEC",
        help="structure names: 1=Liver,2=Kidney_L | Liver,Spleen (in order) | labels.json[:KEY]",
    )
    export.add_argument("--description", help="series description of the DICOM output")
    export.add_argument(
        "--allow-empty", action="store_true", help="write structures without voxels as ROIs without contours"
    )

    demo = commands.add_parser(
        "demo", help="segment the bundled sample cases and write masks, overlays, JSON"
    )
    demo.add_argument(
        "-o", "--output", default="demo-output", help="folder for the results (default: demo-output)"
    )
    add_serve_parser(commands)
    for module in SUBCOMMAND_MODULES.values():
        importlib.import_module(module).add_parser(commands)
    return parser


def add_prompt_options(parser: argparse.ArgumentParser, what: str) -> None:
    """INPUT, --modality, --box and --point (of `segment` and `refine`)."""
    parser.add_argument("input", help="image file or DICOM series folder")
    parser.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1[,Z]", help=f"box {what}")
    parser.add_argument("--point", action="append", default=[], metavar="X,Y[,Z][:neg]", help=f"point {what}")
    parser.add_argument(
        "--modality", choices=MODALITIES, help="intensity normalisation (default: from DICOM or file)"
    )


def add_model_options(parser: argparse.ArgumentParser, precisions=("auto", "fp32", "bf16", "fp16")) -> None:
    """--backend, --weights, --checkpoint and --precision: the fields of a `ModelSpec`."""
    parser.add_argument("--backend", default="litemedsam", help="model backend: litemedsam (default) or sam3")
    parser.add_argument("--weights", metavar="DIR", help=WEIGHTS_HELP)
    parser.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    note = " (fp16: SAM3 on GPUs only)" if "fp16" in precisions else ""
    parser.add_argument("--precision", choices=precisions, default="auto", help=f"model precision{note}")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """-o, --overlay, --json, -q, --output-type and --names (of `segment` and `refine`)."""
    parser.add_argument(
        "-o", "--output", required=True, help="mask file (.nii.gz, .nrrd, .mha; .png for 2D inputs)"
    )
    parser.add_argument("--overlay", metavar="PNG", help="also write a picture of the mask over the image")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--output-type",
        choices=("nifti", "dicom_seg", "rtstruct"),
        default="nifti",
        help="nifti (default: a label map, format by -o's extension), dicom_seg or rtstruct (a DICOM file over "
        "the input series; needs a DICOM series folder as INPUT)",
    )
    parser.add_argument(
        "--names",
        metavar="1=NAME,...",
        help="structure names of the objects for dicom_seg/rtstruct (TG-263 names are used where known; "
        "default Object_1, Object_2, ...)",
    )


class StartObject(argparse.Action):
    """``--object NAME``: records where NAME's prompts start in the --box and --point lists."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        starts = [*(getattr(namespace, self.dest) or []), (value, len(namespace.box), len(namespace.point))]
        setattr(namespace, self.dest, starts)


def grouped_objects(args: argparse.Namespace) -> list:
    """The --object groups of `segment` as `ObjectPrompts` (none without --object)."""
    from oncoseg.prompts import build_object

    starts = args.object or []
    if starts and (starts[0][1] or starts[0][2]):
        raise OncoSegError(
            "--box/--point given before the first --object: put each after the --object it is for"
        )
    ends = [(box, point) for _, box, point in starts[1:]] + [(len(args.box), len(args.point))]
    return [
        build_object(args.box[box:box_end], args.point[point:point_end], name)
        for (name, box, point), (box_end, point_end) in zip(starts, ends)
    ]


# options whose value is comma-separated numbers, which may start with '-' (``--point -5,-5``)
NUMBER_LIST_OPTIONS = ("--box", "--point", "--exemplar")
_NEGATIVE_VALUE = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


def attach_negative_values(argv: list[str]) -> list[str]:
    """``--point -5,-5`` → ``--point=-5,-5``: argparse would take a value starting with '-' for an option."""
    out: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            out.append(token)
            out.extend(tokens)
            break
        if token in NUMBER_LIST_OPTIONS:
            value = next(tokens, None)
            if value is not None and _NEGATIVE_VALUE.match(value):
                out.append(f"{token}={value}")
                continue
            out.append(token)
            if value is not None:
                out.append(value)
            continue
        out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    if args.command is None:
        parser.print_help()
        return 0
    quiet_library_warnings()
    try:
        commands = {
            "segment": run_segment, "refine": run_refine, "info": run_info, "datasets": run_datasets,
            "evaluate": run_evaluate, "train": run_train, "demo": run_demo, "export": run_export, "serve": run_serve,
        }  # fmt: skip
        if args.command in SUBCOMMAND_MODULES:
            return importlib.import_module(SUBCOMMAND_MODULES[args.command]).run(args)
        return commands[args.command](args)
    except OncoSegError as error:
        print(f"oncoseg: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python quiet at exit
        return 0
    except OSError as error:  # a file the command could not read or write, named by the system
        where = f"{error.filename}: " if error.filename else ""
        print(f"oncoseg: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oncoseg: interrupted", file=sys.stderr)
        return 130


def quiet_library_warnings() -> None:
    """Libraries' warnings (e.g. pydicom's "Invalid value for VR UI: '1.2.…'", which quotes the file's UIDs)
    reach stderr as one ``oncoseg: warning:`` line each, UIDs hashed."""
    from oncoseg.logs import WarningLine, route_warnings

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(WarningLine("oncoseg: warning: "))
    route_warnings(handler)


def run_info(args: argparse.Namespace) -> int:
    from oncoseg.io import load_image

    image = load_image(args.input)
    print_warnings(image)
    facts = image.describe()
    facts["modality_source"] = image.metadata.get("modality_source")
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    axes = "z, y, x" if image.is_3d else "y, x"
    print(
        f"shape       {' x '.join(map(str, facts['shape']))}  ({axes}), {image.channels} channel(s), {facts['dtype']}"
    )
    print(
        f"spacing     {' x '.join(f'{s:g}' for s in image.spacing)} mm  (x, y{', z' if image.is_3d else ''})"
    )
    if image.is_3d:
        print(f"orientation {facts['orientation']} on disk, read as LPS")
    print(f"modality    {facts['modality']} ({facts['modality_source']})")
    return 0


def run_datasets(args: argparse.Namespace) -> int:
    from oncoseg.data import datasets_table, format_datasets_table

    rows = datasets_table(Path(args.root) if args.root else None)
    print(json.dumps(rows, indent=2, default=str) if args.json else format_datasets_table(rows))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from oncoseg.evaluate.protocols import parse_protocol
    from oncoseg.evaluate.runner import EvaluationConfig, evaluate

    protocol = parse_protocol(args.protocol, seed=args.seed)
    if getattr(args, "weights", None):  # SAM3's folder, also for DDP worker processes
        from oncoseg.models.sam3 import WEIGHTS_ENV

        os.environ[WEIGHTS_ENV] = str(Path(args.weights).expanduser().resolve())
    config = EvaluationConfig(
        dataset=args.dataset,
        split=None if args.split == "all" else args.split,
        protocol=protocol,
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        tolerance=args.tolerance,
        backend=args.backend,
        checkpoint=args.checkpoint,
        precision=args.precision,
        limit=args.limit,
        data_root=args.data,
    )
    protocol_name = args.protocol.replace(":", "-").replace("=", "")
    out = Path(args.out or f"eval-output/{args.dataset}-{args.split}-{protocol_name}")
    if args.devices * args.num_nodes > 1:
        from oncoseg.evaluate.distributed import evaluate_distributed

        summary = evaluate_distributed(
            config, out, args.devices, args.num_nodes, args.accelerator, args.overwrite, not args.quiet
        )
        if summary is None:  # a worker process: process 0 reports
            return 0
    else:
        summary = evaluate(
            config.dataset, out, config.split, protocol, overwrite=args.overwrite, progress=not args.quiet,
            **{k: v for k, v in vars(config).items() if k not in ("dataset", "split", "protocol")},
        )  # fmt: skip
    print(format_summary(summary))
    print(f"\nper-case results: {out / 'cases.csv'}")
    if not args.no_report:
        from oncoseg.evaluate.report import write_report

        _markdown, html = write_report(out)
        print(f"report: {html}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from oncoseg.train.phases import load_config, train

    config = load_config(args.config)
    for record in train(config, progress=not args.quiet):
        if "adapter" in record:
            dice = record.get("best_val_dice")
            print(
                f"phase {record['phase']}: best validation Dice "
                f"{'–' if dice is None else f'{dice:.3f}'}, adapter {record['adapter']}"
            )
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
        lines.append(f"paper (its own prompts): Dice {summary['paper_dice']:.3f}")
    return "\n".join(lines)


def run_segment(args: argparse.Namespace) -> int:
    from oncoseg.api import segment

    image, objects = read_input(args), grouped_objects(args)
    prompts = {"objects": objects} if objects else {"box": args.box or None, "points": args.point}
    concept = {
        "text": args.text,
        "exemplars": args.exemplar,
        "slice_index": args.slice,
        "threshold": args.threshold,
    }
    with progress(args, image) as on_slice:
        result = segment(image, volume=args.volume, **prompts, **concept, **run_options(args, on_slice))
    print_result(result, args)
    return 0


def run_refine(args: argparse.Namespace) -> int:
    from oncoseg.api import refine

    image = read_input(args)
    with progress(args, image) as on_slice:
        result = refine(image, args.mask, args.box or None, args.point, label=args.label, volume=args.volume,
                        **run_options(args, on_slice))  # fmt: skip
    print_result(result, args)
    return 0


def read_input(args: argparse.Namespace):
    """INPUT read with --modality; the warnings of reading it printed."""
    from oncoseg.io import load_image

    image = load_image(args.input, modality=args.modality)
    print_warnings(image)
    return image


def run_options(args: argparse.Namespace, on_slice) -> dict:
    """The keyword arguments `segment` and `refine` share: model (built after the API's checks) and outputs."""
    return {
        "modality": args.modality, "backend": args.backend, "predictor": lambda: _predictor(args),
        "output": args.output, "overlay": args.overlay, "output_type": args.output_type, "names": args.names,
        "on_slice": on_slice,
    }  # fmt: skip


@contextmanager
def progress(args: argparse.Namespace, image):
    """An ``on_slice`` callback drawing a progress bar over the slices of a volume from the first slice the model
    walks to (None for 2D images and with -q)."""
    bar = None

    def step(_z: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=image.num_slices, desc="propagating", unit="slice", file=sys.stderr, leave=False,
                       disable=None)  # fmt: skip
        bar.update(1)

    try:
        yield None if args.quiet or not image.is_3d else step
    finally:
        if bar is not None:
            bar.close()


def print_result(result, args: argparse.Namespace) -> None:
    summary = {**result.to_dict(), "output": str(args.output)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary, args.output, args.overlay)


def print_warnings(image) -> None:
    """The warnings of reading ``image`` (e.g. unreadable DICOM files skipped), one line each on stderr."""
    for warning in image.metadata.get("warnings", []):
        print(f"oncoseg: warning: {warning}", file=sys.stderr)


def size(obj: dict, digits: int = 2) -> str:
    """An object's volume (mL, ``digits`` decimals) or, for a 2D image, its area (mm², one decimal fewer)."""
    if obj.get("volume_ml") is not None:
        return f"{obj['volume_ml']:.{digits}f} mL"
    return f"{obj['area_mm2']:.{digits - 1}f} mm²"


def print_summary(summary: dict, output: str, overlay: str | None) -> None:
    for obj in summary["objects"]:
        where = f", slices {obj['slices'][0]}-{obj['slices'][1]}" if obj.get("slices") else ""
        print(
            f"object {obj['label']}: {size(obj)}, RECIST long {obj['recist_long_mm']:.1f} mm, "
            f"short {obj['recist_short_mm']:.1f} mm, score {obj['score']:.2f}{where}"
        )
    print(f"mask written to {output}" + (f", overlay to {overlay}" if overlay else ""))


class _StderrWarnings(logging.Handler):
    """Warnings of the DICOM writers/readers as ``oncoseg: warning: ...`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"oncoseg: warning: {record.getMessage()}", file=sys.stderr)


def run_export(args: argparse.Namespace) -> int:
    from oncoseg.dicom import load_reference, standard_name, write_rtstruct, write_seg
    from oncoseg.dicom.export import check_nifti_output, export_nifti, masks_from_files, parse_names
    from oncoseg.dicom.reference import check_text
    from oncoseg.io.write import check_output_path

    dicom_log = logging.getLogger("oncoseg.dicom")
    if not any(isinstance(h, _StderrWarnings) for h in dicom_log.handlers):
        dicom_log.addHandler(_StderrWarnings(logging.WARNING))
    if args.format == "nifti":  # checks of the request before the series is read
        if len(args.inputs) != 1:
            raise OncoSegError("export nifti reads one RTSTRUCT or SEG file at a time")
        check_nifti_output(args.output)
    else:
        check_output_path(args.output, "DICOM output (e.g. rt.dcm)")
        if args.description is not None:
            check_text(args.description, "LO", "series description")
        names = parse_names(args.names)
    reference = load_reference(args.reference)
    print_warnings(reference.image)
    if args.format == "nifti":
        for path in export_nifti(args.inputs[0], reference, args.output):
            print(f"written {path}")
        return 0
    masks = masks_from_files(args.inputs, reference, names)
    options = {"series_description": args.description} if args.description else {}
    write = write_rtstruct if args.format == "rtstruct" else write_seg
    write(masks, reference, args.output, allow_empty=args.allow_empty, **options)
    written = ", ".join(standard_name(name) for name in masks)
    print(f"{args.format.upper()} with {len(masks)} structure(s) written to {args.output}: {written}")
    return 0


def _predictor(args: argparse.Namespace):
    """The predictor of --backend, --weights, --checkpoint, --precision and --threshold (`ModelSpec`)."""
    from oncoseg.models.spec import ModelSpec

    return ModelSpec.from_args(args).build_predictor()


def run_demo(args: argparse.Namespace) -> int:
    """Segment every bundled sample with its suggested prompt; 3D samples by propagation."""
    from oncoseg.demo import run_demo as demo

    def show(name: str, sample: dict, entry: dict) -> None:
        obj = entry["objects"][0]
        print(
            f"{name:18s} {sample['target']:14s} {size(obj, 1):>10s}  RECIST {obj['recist_long_mm']:.1f} x "
            f"{obj['recist_short_mm']:.1f} mm  Dice vs reference {entry['dice_vs_reference']:.3f}"
        )

    demo(args.output, show)
    print(f"masks, overlays and results.json written to {Path(args.output)}/")
    return 0


EPILOG_SERVE = """\
examples:
  oncoseg serve                                   # http://127.0.0.1:8765/ : web page, API, /docs
  oncoseg serve --pacs http://127.0.0.1:8042      # open series from Orthanc (DICOMweb), store SEG/RTSTRUCT back
  ONCOSEG_TOKEN=... oncoseg serve --host 0.0.0.0  # beyond loopback only with a bearer token

The web page: pick a series (or upload a file), scroll slices, left click = include, right click = exclude,
drag = box; "Propagate 3D" follows the object through the volume; "Save to PACS" stores DICOM SEG/RTSTRUCT.
API: POST /api/images (series UID) or /api/images/upload, then /api/images/ID/segment, /propagate,
/measurements, /store (OpenAPI at /docs). 3D Slicer and OHIF MONAI Label plugins: point them at the
service URL (models "oncoseg" and "oncoseg_slice"; with a token, log in with the token as password).
Model work runs one request at a time; when --max-queue requests wait, more get HTTP 503 (retry later).
Uploads are checked from their headers against the limits before decoding (docs/security.md).
"""


def add_serve_parser(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the interactive service (web page, REST API, MONAI Label-compatible routes)",
        description="Serve interactive segmentation over HTTP: a web page, a REST API (OpenAPI at /docs) and the "
        "subset of MONAI Label's API that 3D Slicer and OHIF use. Binds 127.0.0.1 unless given a token.",
        epilog=EPILOG_SERVE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    serve.add_argument(
        "--token-file",
        help="file holding the bearer token (or set ONCOSEG_TOKEN); required to listen beyond loopback",
    )
    serve.add_argument("--pacs", help="Orthanc/DICOMweb base URL, e.g. http://127.0.0.1:8042")
    serve.add_argument("--dicomweb", help="DICOMweb root if not PACS/dicom-web")
    serve.add_argument(
        "--pacs-user", help="PACS user for HTTP basic auth (password from ONCOSEG_PACS_PASSWORD)"
    )
    serve.add_argument(
        "--memory-budget-mb",
        type=float,
        default=2048,
        help="memory for open images and embeddings (default 2048)",
    )
    serve.add_argument("--max-upload-mb", type=float, default=512, help="largest request body (default 512)")
    serve.add_argument("--max-queue", type=int, default=8, help="model requests allowed to wait (default 8)")
    serve.add_argument(
        "--max-image-voxels",
        type=int,
        help="largest image an upload may declare, checked from its header before decoding "
        "(default: memory budget / 8 bytes, 268M voxels at 2048 MB)",
    )
    serve.add_argument(
        "--max-concurrent-uploads",
        type=int,
        default=2,
        help="uploads decoded at once; more get 503 (default 2)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a further Host name to answer to without a token (loopback names always; repeatable)",
    )
    serve.add_argument(
        "--workdir", help="folder for uploads, downloads and the datastore (default: a temp folder)"
    )
    serve.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    serve.add_argument("--no-warmup", action="store_true", help="skip the model warm-up at start")


def run_serve(args: argparse.Namespace) -> int:
    from oncoseg.service.security import check_bind

    token = os.environ.get("ONCOSEG_TOKEN") or None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise OncoSegError(f"{args.token_file}: cannot read the token file ({error.strerror})") from None
    check_bind(args.host, token)  # before loading the model

    from oncoseg.service.app import serve
    from oncoseg.service.core import ServiceConfig

    pacs_auth = (args.pacs_user, os.environ.get("ONCOSEG_PACS_PASSWORD", "")) if args.pacs_user else None
    config = ServiceConfig(
        host=args.host,
        port=args.port,
        token=token,
        pacs_url=args.pacs,
        dicomweb_url=args.dicomweb,
        pacs_auth=pacs_auth,
        memory_budget_mb=args.memory_budget_mb,
        max_upload_mb=args.max_upload_mb,
        max_queue=args.max_queue,
        max_image_voxels=args.max_image_voxels,
        max_concurrent_uploads=args.max_concurrent_uploads,
        allowed_hosts=tuple(args.allowed_host),
        workdir=args.workdir,
        checkpoint=args.checkpoint,
        warmup=not args.no_warmup,
    )
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())

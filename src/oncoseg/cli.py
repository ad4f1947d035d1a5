"""The ``oncoseg`` command: a thin shell over the Python API (``oncoseg.api``, ``oncoseg.demo``, the evaluation,
training, DICOM and service packages). It parses arguments, calls the core and formats what comes back."""

from __future__ import annotations

import argparse
import atexit
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

one prompt set per object: --object [NAME], then its boxes/points (the API's objects=[{"name": NAME,
  "box": ..., "points": [...]}, ...]). Repeat --object for more objects (labels in that order), e.g. one click
  per object: --object --point 120,80 --object --point 300,200. NAME is also the structure name of
  dicom_seg/rtstruct outputs. Without --object, every --box is an object of its own and the points go with
  the one box (or form one object). An object's prompts may lie on several slices (at most one box per slice):
  the slice of its first box (without a box: of its first point) starts the object; each further slice's
  prompt corrects it there, as `oncoseg refine` does: that slice becomes an anchor and, with --3d, the walk
  between anchors is done again.

units: millimetres (mL, mm²) for images with a physical voxel size (NIfTI, NRRD, MHA, DICOM); pixels (px², px)
  for pictures (PNG, JPEG, TIFF, BMP) unless --spacing gives their pixel size in mm.

examples:
  oncoseg segment polyp.jpg --box 120,80,300,260 -o polyp_mask.png --overlay polyp_overlay.png
  oncoseg segment polyp.jpg --object --point 200,170 --object --point 420,300 -o two_polyps.png
  oncoseg segment scan.png --box 120,80,300,260 --spacing 0.1,0.1 -o lesion.png
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
keep their masks. Where the walk stops instead (the object ended or leaked), the saved mask's slices beyond it
are kept as they are.
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


WEIGHTS_HELP = (
    "SAM3 only: the folder of the facebook/sam3 download (Hugging Face layout; default $ONCOSEG_SAM3_WEIGHTS). "
    "The weights are gated: request access on huggingface.co/facebook/sam3 first (see docs/sam3.md)"
)
SPACING_HELP = (
    "pixel size in mm of a picture without one (PNG/JPEG/TIFF/BMP; one value for square pixels): measurements "
    "are then in mm instead of pixels"
)
CHECKPOINT_HELP = "fine-tuned weights: a LoRA adapter file, a full state dict, or a name from `oncoseg train`"


# commands whose parser and code live in their own package: each module has add_parser(commands) and run(args)
# and may use this module's shared option helpers (add_model_options, CHECKPOINT_HELP, print_warnings); they are
# loaded by name (importlib), so this module never imports them and there is no import cycle
SUBCOMMAND_MODULES = {
    "evaluate": "oncoseg.evaluate.cli",
    "train": "oncoseg.train.cli",
    "export": "oncoseg.dicom.cli",
    "serve": "oncoseg.service.cli",
    "contour": "oncoseg.contour.cli",
    "assistant": "oncoseg.assistant.cli",
    "napari": "oncoseg.napari_plugin.cli",
    "concepts": "oncoseg.concepts.cli",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command`` (the one the command line names) the sub-packages' parsers of other
    commands are not loaded: their modules import DICOM, service or training code, about 0.4 s that a
    `segment` run does not need."""
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
        "--object",
        action=StartObject,
        nargs="?",
        metavar="NAME",
        help="the prompts after it are one object (NAME optional)",
    )
    seg.add_argument(
        "--3d", dest="volume", action="store_true", help="propagate through the volume from the prompt"
    )
    add_follow_mask_option(seg)
    seg.add_argument(
        "--pick",
        choices=("smaller", "larger"),
        help="clicks alone may mean a small structure or the organ around it: take the next smaller or larger "
        "of the sizes the model found (the summary lists them) instead of its best-scoring one",
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
    add_follow_mask_option(refine)
    add_model_options(refine)
    add_output_options(refine)

    info = commands.add_parser("info", help="show shape, spacing, orientation and modality of an image")
    info.add_argument("input", help="image file or DICOM series folder")
    info.add_argument("--spacing", metavar="X,Y", help=SPACING_HELP)
    info.add_argument("--json", action="store_true", help="print JSON")

    datasets = commands.add_parser(
        "datasets",
        help="list the datasets Onco-Seg knows and which are found locally",
        description="List the benchmark datasets (the paper's and ours), their modality, target and layout, "
        "and whether they are found under the data root (--root, else $ONCOSEG_DATA, else the folder saved by "
        "--set-root, else shared/data beside the repository).",
    )
    datasets.add_argument("--root", help="folder holding the datasets")
    datasets.add_argument(
        "--set-root", metavar="DIR", help="save DIR as the data root for every later command (user setting)"
    )
    datasets.add_argument("--json", action="store_true", help="print JSON")

    for name, module in SUBCOMMAND_MODULES.items():
        if name == "serve" and command in (
            None,
            "demo",
        ):  # `oncoseg --help` lists demo between export and serve
            demo = commands.add_parser(
                "demo", help="segment the bundled sample cases and write masks, overlays, JSON"
            )
            demo.add_argument(
                "-o", "--output", default="demo-output", help="folder for the results (default: demo-output)"
            )
            add_encoder_option(demo)
        if command in (None, name):
            importlib.import_module(module).add_parser(commands)
    return parser


def add_prompt_options(parser: argparse.ArgumentParser, what: str) -> None:
    """INPUT, --modality, --box and --point (of `segment` and `refine`)."""
    parser.add_argument("input", help="image file or DICOM series folder")
    parser.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1[,Z]", help=f"box {what}")
    parser.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y[,Z][:neg]",
        help=f"point {what} (a click; ':neg' excludes)"
        + (
            ". Clicks alone leave the size to the model: a --3d walk from them reads REVIEW 'walked from a "
            "click alone' (docs/results.md, Confidence); add a --box for a volume to trust"
            if what == "prompt"
            else ""
        ),
    )
    parser.add_argument(
        "--modality", choices=MODALITIES, help="intensity normalisation (default: from DICOM or file)"
    )
    parser.add_argument("--spacing", metavar="X,Y", help=SPACING_HELP)


def add_model_options(parser: argparse.ArgumentParser, precisions=("auto", "fp32", "bf16", "fp16")) -> None:
    """--backend, --weights, --checkpoint and --precision: the fields of a `ModelSpec`."""
    parser.add_argument("--backend", default="litemedsam", help="model backend: litemedsam (default) or sam3")
    parser.add_argument("--weights", metavar="DIR", help=WEIGHTS_HELP)
    parser.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    note = " (fp16: SAM3 on GPUs only)" if "fp16" in precisions else ""
    parser.add_argument("--precision", choices=precisions, default="auto", help=f"model precision{note}")
    parser.add_argument("--threads", type=int, help="torch CPU threads for the model (default: torch's own)")
    add_encoder_option(parser)


def add_encoder_option(parser: argparse.ArgumentParser) -> None:
    """--encoder: LiteMedSAM's image encoder (`ModelSpec.encoder`; docs/student.md)."""
    from oncoseg.models.student import ENCODERS

    parser.add_argument(
        "--encoder",
        choices=ENCODERS,
        default="auto",
        help="LiteMedSAM's image encoder: student (distilled to a 168-pixel frame, about 2x faster), teacher "
        "(LiteMedSAM's own, 256 pixels), auto (default: the student unless --weights/--checkpoint is given)",
    )


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
    code = run_command(argv)
    if argv is None and named_command(sys.argv[1:]) in EXIT_WITHOUT_TEARDOWN:
        exit_without_teardown(code)
    return code


# Commands that end the process without the interpreter's teardown when run as the program: clearing torch's
# modules and its libraries' destructors take 0.5-3 s after the work is done (more on a loaded host).
EXIT_WITHOUT_TEARDOWN = frozenset({"segment", "refine", "info"})


def exit_without_teardown(code: int) -> None:
    """Run the exit handlers (logging's flush, finalizers), flush the standard streams and end the process now."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(code)


def run_command(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run the command and return its exit code."""
    argv = attach_negative_values(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser(named_command(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    quiet_library_warnings()
    try:
        commands = {
            "segment": run_segment, "refine": run_refine, "info": run_info, "datasets": run_datasets,
            "demo": run_demo,
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


def named_command(argv: list[str]) -> str | None:
    """The command ``argv`` names when it is a known one (its first word that is not an option), else None."""
    first = next((token for token in argv if not token.startswith("-")), None)
    known = {"segment", "refine", "info", "datasets", "demo", *SUBCOMMAND_MODULES}
    return first if first in known else None


def quiet_library_warnings() -> None:
    """Libraries' warnings (e.g. pydicom's "Invalid value for VR UI: '1.2.…'", which quotes the file's UIDs)
    reach stderr as one ``oncoseg: warning:`` line each, UIDs hashed."""
    from oncoseg.logs import WarningLine, route_warnings

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(WarningLine("oncoseg: warning: "))
    route_warnings(handler)


def run_info(args: argparse.Namespace) -> int:
    from oncoseg.io import load_image

    image = load_image(args.input, spacing=args.spacing)
    print_warnings(image)
    facts = image.describe()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    axes = "z, y, x" if image.is_3d else "y, x"
    print(
        f"shape       {' x '.join(map(str, facts['shape']))}  ({axes}), {image.channels} channel(s), {facts['dtype']}"
    )
    unit = "px  (no physical pixel size: --spacing gives one)" if image.spacing_unit == "px" else "mm"
    print(
        f"spacing     {' x '.join(f'{s:g}' for s in image.spacing)} {unit}  (x, y{', z' if image.is_3d else ''})"
    )
    if image.is_3d:
        print(f"orientation {facts['orientation']} on disk, read as LPS")
    print(f"modality    {facts['modality']} ({facts['modality_source']})")
    return 0


def run_datasets(args: argparse.Namespace) -> int:
    from oncoseg.data import datasets_table, format_datasets_table
    from oncoseg.data.registry import ROOT_HELP, data_root, root_source, save_data_root

    if args.set_root:
        saved = save_data_root(args.set_root)
        print(f"data root set to {saved} (saved in {root_source(None, saved=True)})", file=sys.stderr)
    root = data_root(args.root)
    if not root.is_dir():
        print(f"oncoseg: warning: data root {root} ({root_source(args.root)}) does not exist: {ROOT_HELP}",
              file=sys.stderr)  # fmt: skip
    rows = datasets_table(root)
    print(json.dumps(rows, indent=2, default=str) if args.json else format_datasets_table(rows))
    return 0


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
        result = segment(image, volume=args.volume, pick=args.pick, **prompts, **concept,
                         **run_options(args, on_slice))  # fmt: skip
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

    image = load_image(args.input, modality=args.modality, spacing=args.spacing)
    print_warnings(image)
    return image


def add_follow_mask_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--follow-mask",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="3D (default on): give each next slice the neighbour's mask as well as its box, answered by the "
        "shipped mask-prompt decoder, for objects covering at least 5%% of the slice's frame (docs/propagation.md: "
        "hippocampus test Dice 0.723 against 0.494 from the box alone; smaller objects walk box-only); "
        "--no-follow-mask: the box alone on every slice (the zero-shot walk)",
    )


def run_options(args: argparse.Namespace, on_slice) -> dict:
    """The keyword arguments `segment` and `refine` share: model (built after the API's checks), the walk's
    settings and outputs."""
    from oncoseg.volume import PropagationSettings

    return {
        "modality": args.modality, "backend": args.backend, "predictor": lambda: _predictor(args),
        "propagation": None if args.follow_mask is None else PropagationSettings(mask_prompt=args.follow_mask),
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
    """An object's volume (mL, ``digits`` decimals) or, for a 2D image, its area (mm², one decimal fewer); in
    px³/px² for a picture without a physical pixel size (`oncoseg.measure.size_text`)."""
    from oncoseg.measure import size_text

    return size_text(obj, digits)


def modality_note(image: dict) -> str | None:
    """A line saying a picture's modality was guessed (None when it was given or read from DICOM; a volume's
    guess, CT from Hounsfield units or else MRI, is not repeated on every run)."""
    if image.get("modality_source") != "guessed" or len(image.get("shape", ())) != 2:
        return None
    return (
        f"modality {image['modality']} is a guess from the file (it sets the intensity normalisation): "
        "give --modality if it is wrong"
    )


def describe_quality(quality: dict) -> str:
    """ "quality 0.91", or "REVIEW (quality 0.42: reasons)" for a result that is likely wrong."""
    from oncoseg.quality import Quality

    return Quality(
        quality["estimate"],
        quality["review"],
        tuple(quality["reasons"]),
        tuple(quality.get("review_slices", ())),
    ).describe()


def print_summary(summary: dict, output: str, overlay: str | None) -> None:
    note = modality_note(summary.get("image", {}))
    if note:
        print(note)
    for obj in summary["objects"]:
        where = f", slices {obj['slices'][0]}-{obj['slices'][1]}" if obj.get("slices") else ""
        unit = obj.get("unit", "mm")
        print(
            f"object {obj['label']}: {size(obj)}, RECIST long {obj[f'recist_long_{unit}']:.1f} {unit}, "
            f"short {obj[f'recist_short_{unit}']:.1f} {unit}, score {obj['score']:.2f}{where}"
            + (f", {describe_quality(obj['quality'])}" if obj.get("quality") else "")
        )
        if obj.get("alternatives"):
            sizes = ", ".join(f"{a['pixels']} px" for a in obj["alternatives"])
            print(f"  other sizes these clicks could mean: {sizes} (--pick smaller / --pick larger)")
    if any(obj.get("unit") == "px" for obj in summary["objects"]):
        print("sizes in pixels: the picture has no physical pixel size (--spacing X,Y in mm gives one)")
    print(f"mask written to {output}" + (f", overlay to {overlay}" if overlay else ""))


def _predictor(args: argparse.Namespace):
    """The predictor of --backend, --weights, --checkpoint, --precision and --threshold (`ModelSpec`)."""
    from oncoseg.models.spec import ModelSpec

    return ModelSpec.from_args(args).build_predictor()


def run_demo(args: argparse.Namespace) -> int:
    """Segment every bundled sample with its suggested prompt; 3D samples by propagation."""
    from oncoseg.demo import run_demo as demo
    from oncoseg.measure import recist_text

    def show(name: str, sample: dict, entry: dict) -> None:
        obj = entry["objects"][0]
        print(
            f"{name:18s} {sample['target']:14s} {size(obj, 1):>10s}  RECIST {recist_text(obj)}  "
            f"Dice vs reference {entry['dice_vs_reference']:.3f}  {describe_quality(obj['quality'])}"
        )

    demo(args.output, show, encoder=args.encoder)
    print(f"masks, overlays and results.json written to {Path(args.output)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``oncoseg`` command: a thin shell over the Python API (``oncoseg.api``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from oncoseg import __version__
from oncoseg.errors import OncoSegError
from oncoseg.modality import MODALITIES

EPILOG_SEGMENT = """\
prompts (pixel coordinates; x = column, y = row, z = slice index of a volume, counted from 0):
  --box X0,Y0,X1,Y1[,Z]      a box around the object (repeat for several objects: one mask each)
  --point X,Y[,Z][:neg]      a click inside the object; ':neg' marks a point to exclude

examples:
  oncoseg segment polyp.jpg --box 120,80,300,260 -o polyp_mask.png --overlay polyp_overlay.png
  oncoseg segment ct.nii.gz --box 14,16,80,76,24 --3d -o liver.nii.gz --json
  oncoseg segment ct_dicom_folder/ --box 200,180,320,300,45 --modality ct -o lesion.nii.gz

Find coordinates with `oncoseg info IMAGE` (shape is printed as z, y, x) or any viewer that shows pixel indices
of the image as stored (volumes are read in LPS orientation: x to the patient's left, y to posterior, z up).
Exit code 2 and one line on stderr for bad input (unreadable file, prompt outside the image, empty result);
no output file is written unless the whole run succeeds.
"""


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
    seg.add_argument("input", help="image file or DICOM series folder")
    seg.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1[,Z]", help="box prompt")
    seg.add_argument("--point", action="append", default=[], metavar="X,Y[,Z][:neg]", help="point prompt")
    seg.add_argument(
        "--modality", choices=MODALITIES, help="intensity normalisation (default: from DICOM or file)"
    )
    seg.add_argument(
        "--3d", dest="volume", action="store_true", help="propagate through the volume from the prompt"
    )
    seg.add_argument(
        "-o", "--output", required=True, help="mask file (.nii.gz, .nrrd, .mha; .png for 2D inputs)"
    )
    seg.add_argument("--overlay", metavar="PNG", help="also write a picture of the mask over the image")
    seg.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    seg.add_argument("--backend", default="litemedsam", help="model backend (default: litemedsam)")
    seg.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="encoder precision"
    )
    seg.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    info = commands.add_parser("info", help="show shape, spacing, orientation and modality of an image")
    info.add_argument("input", help="image file or DICOM series folder")
    info.add_argument("--json", action="store_true", help="print JSON")

    datasets = commands.add_parser(
        "datasets",
        help="list the datasets Onco-Seg knows and which are found locally",
        description="List the benchmark datasets (the paper's and ours), their modality, target and layout, "
        "and whether they are found under the data root (--root, else $ONCOSEG_DATA, else ../shared/data).",
    )
    datasets.add_argument("--root", help="folder holding the datasets")
    datasets.add_argument("--json", action="store_true", help="print JSON")

    demo = commands.add_parser(
        "demo", help="segment the bundled sample cases and write masks, overlays, JSON"
    )
    demo.add_argument(
        "-o", "--output", default="demo-output", help="folder for the results (default: demo-output)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return {"segment": run_segment, "info": run_info, "datasets": run_datasets, "demo": run_demo}[args.command](args)
    except OncoSegError as error:
        print(f"oncoseg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oncoseg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python quiet at exit
        return 0


def run_info(args: argparse.Namespace) -> int:
    from oncoseg.io import load_image

    image = load_image(args.input)
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


def run_segment(args: argparse.Namespace) -> int:
    from oncoseg.io import load_image

    image = load_image(args.input, modality=args.modality)
    _check_request(args, image)
    from oncoseg.api import segment

    progress = None
    if args.volume and not args.quiet:
        from tqdm import tqdm

        progress = tqdm(
            total=image.num_slices,
            desc="propagating",
            unit="slice",
            file=sys.stderr,
            leave=False,
            disable=None,
        )
    try:
        result = segment(
            image,
            box=args.box or None,
            points=args.point,
            modality=args.modality,
            volume=args.volume,
            backend=args.backend,
            on_slice=(lambda z: progress.update(1)) if progress else None,
            **({"predictor": _predictor(args)} if args.backend == "litemedsam" else {}),
        )
    finally:
        if progress:
            progress.close()
    result.save(args.output)
    if args.overlay:
        result.save_overlay(args.overlay)
    summary = result.to_dict()
    summary["output"] = str(args.output)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary, args.output, args.overlay)
    return 0


def _check_request(args: argparse.Namespace, image) -> None:
    """Fail on bad prompts, or --3d on a 2D image, before torch and the model are loaded."""
    from oncoseg.io import check_mask_path
    from oncoseg.prompts import build_prompts, validate_prompt

    if args.volume and not image.is_3d:
        raise OncoSegError("--3d needs a volume, but this image is 2D")
    for prompt in build_prompts(args.box, args.point):
        validate_prompt(prompt, image.shape)
    check_mask_path(args.output, image)
    if args.overlay and not args.overlay.lower().endswith(".png"):
        raise OncoSegError(f"{args.overlay}: the overlay is a picture; give a .png file name")


def _predictor(args: argparse.Namespace):
    from oncoseg.predictor import Predictor

    return Predictor(args.backend, precision=args.precision)


def print_summary(summary: dict, output: str, overlay: str | None) -> None:
    for obj in summary["objects"]:
        size = (
            f"{obj['volume_ml']:.2f} mL" if obj.get("volume_ml") is not None else f"{obj['area_mm2']:.1f} mm²"
        )
        where = f", slices {obj['slices'][0]}-{obj['slices'][1]}" if obj.get("slices") else ""
        print(
            f"object {obj['label']}: {size}, RECIST long {obj['recist_long_mm']:.1f} mm, "
            f"short {obj['recist_short_mm']:.1f} mm, score {obj['score']:.2f}{where}"
        )
    print(f"mask written to {output}" + (f", overlay to {overlay}" if overlay else ""))


def run_demo(args: argparse.Namespace) -> int:
    """Segment every bundled sample with its suggested prompt; 3D samples by propagation."""
    from oncoseg.api import segment
    from oncoseg.predictor import Predictor
    from oncoseg.samples import list_samples, sample_path

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor()
    report = {}
    for name, sample in list_samples().items():
        prompt = sample["prompt"]
        box = list(prompt["box"]) + ([prompt["z"]] if "z" in prompt else [])
        volume = "z" in prompt
        suffix = ".nii.gz" if volume else ".png"
        result = segment(
            sample_path(name),
            box=box,
            modality=sample["modality"],
            volume=volume,
            predictor=predictor,
            output=out / f"{name}_mask{suffix}",
            overlay=out / f"{name}_overlay.png",
        )
        entry = result.to_dict()
        entry["dice_vs_reference"] = _dice_with_reference(result, sample_path(sample["mask"]))
        report[name] = entry
        obj = entry["objects"][0]
        size = (
            f"{obj['volume_ml']:.1f} mL" if obj.get("volume_ml") is not None else f"{obj['area_mm2']:.0f} mm²"
        )
        print(
            f"{name:18s} {sample['target']:14s} {size:>10s}  RECIST {obj['recist_long_mm']:.1f} x "
            f"{obj['recist_short_mm']:.1f} mm  Dice vs reference {entry['dice_vs_reference']:.3f}"
        )
    from oncoseg.io import atomic_write_path

    with atomic_write_path(out / "results.json") as temporary:
        temporary.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"masks, overlays and results.json written to {out}/")
    return 0


def _dice_with_reference(result, mask_path: Path) -> float:
    from oncoseg.io import load_image

    reference = load_image(mask_path).array
    reference = (reference[..., 0] if reference.ndim == result.labels.ndim + 1 else reference) > 0
    predicted = result.labels > 0
    return float(2 * (predicted & reference).sum() / max(1, predicted.sum() + reference.sum()))


if __name__ == "__main__":
    sys.exit(main())

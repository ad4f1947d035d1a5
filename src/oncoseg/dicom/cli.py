"""``oncoseg export``: the subcommand's arguments and output (kept here; `oncoseg.cli` wires it in). The work is
`oncoseg.dicom.export.export`."""

from __future__ import annotations

import argparse
import logging
import sys

from oncoseg.cli import print_warnings

EPILOG = """\
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


def add_parser(commands) -> argparse.ArgumentParser:
    export = commands.add_parser(
        "export",
        help="convert masks to DICOM-RT Structure Set / DICOM SEG over a DICOM series, or back to NIfTI",
        description="rtstruct|seg: write MASK files (NIfTI/NRRD/MHA label maps or binary masks on the grid of the "
        "--reference series) as one RTSTRUCT or SEG file. nifti: read an RTSTRUCT or SEG file (e.g. manual "
        "contours) back onto the --reference series as NIfTI. Masks are never resampled: one that does not fit "
        "the series (shape, spacing, origin, orientation) is refused.",
        epilog=EPILOG,
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
    return export


class StderrWarnings(logging.Handler):
    """Warnings of the DICOM writers/readers as ``oncoseg: warning: ...`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"oncoseg: warning: {record.getMessage()}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from oncoseg.dicom.export import export

    dicom_log = logging.getLogger("oncoseg.dicom")
    if not any(isinstance(h, StderrWarnings) for h in dicom_log.handlers):
        dicom_log.addHandler(StderrWarnings(logging.WARNING))
    done = export(
        args.format, args.inputs, args.reference, args.output, names=args.names, description=args.description,
        allow_empty=args.allow_empty, on_reference=lambda series: print_warnings(series.image),
    )  # fmt: skip
    if args.format == "nifti":
        for path in done.paths:
            print(f"written {path}")
        return 0
    written = ", ".join(done.structures)
    print(
        f"{args.format.upper()} with {len(done.structures)} structure(s) written to {args.output}: {written}"
    )
    return 0

"""``oncoseg napari``: the subcommand's arguments and runner (kept here; `oncoseg.cli` wires it in)."""

from __future__ import annotations

import argparse

from oncoseg.modality import MODALITIES

EPILOG = """\
examples:
  oncoseg napari                              # empty viewer with the Onco-Seg panel (File > Open ...)
  oncoseg napari ct.nii.gz                    # NIfTI/NRRD/MHA, shown in mm (voxel spacing kept)
  oncoseg napari ct_dicom_folder/             # a DICOM series: DICOM SEG and RTSTRUCT export then work
  oncoseg napari --sample ct_abdomen          # a bundled demo case (ct_abdomen, hippocampus, polyp, ...)
  oncoseg napari mr.nii.gz --modality mri --checkpoint brain

In the viewer: "Draw box" (or "Click": left = include, right = exclude) on the current slice, then
Shift-S segments the slice, Shift-D propagates it through the volume, Shift-C commits it as a new object,
Shift-B segments every box, Shift-N switches include/exclude, Shift-X clears the prompts. The panel shows
volume and RECIST diameters of each object and exports NIfTI, DICOM SEG or RTSTRUCT. Needs a display and
napari (pip install "oncoseg[napari]"). See docs/napari.md.
"""


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "napari",
        help="open the napari viewer with the Onco-Seg panel (box/click/text prompts, 3D, measurements, export)",
        description="Open napari with the Onco-Seg panel docked, optionally with IMAGE (NIfTI, NRRD/MHA or a "
        "DICOM series folder) loaded in millimetre scale.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", nargs="?", help="image file or DICOM series folder to open")
    parser.add_argument("--sample", help="open a bundled sample instead (see `oncoseg demo`)")
    parser.add_argument("--modality", choices=MODALITIES, help="override the detected modality")
    parser.add_argument("--backend", default="litemedsam", help="model backend: litemedsam (default) or sam3")
    parser.add_argument(
        "--checkpoint",
        help="LiteMedSAM: fine-tuned weights (adapter, state dict or `oncoseg train` name); SAM3: weights folder",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from oncoseg.napari_plugin import launch

    launch(
        args.image,
        sample=args.sample,
        modality=args.modality,
        backend=args.backend,
        checkpoint=args.checkpoint,
    )
    return 0

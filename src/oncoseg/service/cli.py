"""``oncoseg serve``: the subcommand's arguments (kept here; `oncoseg.cli` wires it in). The work is
`oncoseg.service.serve` with a `ServiceConfig` of the options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from oncoseg.cli import CHECKPOINT_HELP, add_encoder_option
from oncoseg.errors import OncoSegError

EPILOG = """\
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


def add_parser(commands) -> argparse.ArgumentParser:
    serve = commands.add_parser(
        "serve",
        help="run the interactive service (web page, REST API, MONAI Label-compatible routes)",
        description="Serve interactive segmentation over HTTP: a web page, a REST API (OpenAPI at /docs) and the "
        "subset of MONAI Label's API that 3D Slicer and OHIF use. Binds 127.0.0.1 unless given a token.",
        epilog=EPILOG,
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
    add_encoder_option(serve)
    serve.add_argument("--no-warmup", action="store_true", help="skip the model warm-up at start")
    serve.add_argument("--threads", type=int, help="torch CPU threads for the model (default: torch's own)")
    serve.add_argument(
        "--encode-ahead",
        type=int,
        default=24,
        metavar="N",
        help="slices each way around the one on screen whose embeddings the idle model computes ahead, within "
        "the memory budget (default 24; 0: the slice on screen only)",
    )
    return serve


def run(args: argparse.Namespace) -> int:
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
        encoder=args.encoder,
        warmup=not args.no_warmup,
        threads=args.threads,
        encode_ahead=max(0, args.encode_ahead),
    )
    serve(config)
    return 0

"""``oncoseg assistant``: the subcommand's arguments and runner (kept here; `oncoseg.cli` wires it in)."""

from __future__ import annotations

import argparse
import logging
import os

EPILOG = """\
examples:
  oncoseg assistant --pacs http://127.0.0.1:8042 --state /var/lib/oncoseg/state.db
  oncoseg assistant --pacs http://127.0.0.1:8042 --user oncoseg --password-env PACS_PASSWORD --organs Liver,Spleen
  oncoseg assistant --pacs http://127.0.0.1:8042 --scp-port 11112   # also accept C-STORE as AE ONCOSEG
  oncoseg assistant --pacs http://127.0.0.1:8042 --engine nnunet --model NNUNET_MODEL_DIR [--label-map map.json]

Each new CT series (Orthanc's StableSeries event) is contoured once and answered with an RTSTRUCT in the same
study. The state file remembers what was done (a series interrupted by a crash is retried, at most
--max-attempts times); the audit log (JSON lines, default audit.jsonl beside the state) records a hash of each
series UID, the outcome, the model, the Onco-Seg version and timings — no patient identifiers. Stop it with
SIGTERM or Ctrl-C.
"""


def add_parser(commands) -> argparse.ArgumentParser:
    from oncoseg.contour.cli import add_engine_arguments

    parser = commands.add_parser(
        "assistant",
        help="watch a PACS, contour every new CT series and store an RTSTRUCT back",
        description="The silent assistant: poll an Orthanc PACS for new CT series (and/or receive them by DICOM "
        "C-STORE), contour their organs at risk and store the RTSTRUCT back into the PACS in the same study.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pacs", required=True, metavar="URL", help="Orthanc base URL, e.g. http://127.0.0.1:8042"
    )
    parser.add_argument("--user", help="PACS user (HTTP basic auth)")
    parser.add_argument(
        "--password-env", metavar="VAR", help="environment variable holding the PACS password"
    )
    parser.add_argument("--state", default="oncoseg-assistant/state.db", help="SQLite state file")
    parser.add_argument("--audit", help="audit log, JSON lines (default: audit.jsonl beside --state)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls (default 5)")
    parser.add_argument(
        "--organs", help="comma-separated TG-263 names or aliases (default: all the atlas has)"
    )
    parser.add_argument("--atlas", help="atlas folder (see `oncoseg contour --help`)")
    add_engine_arguments(parser)  # --engine, --model, --label-map: as for `oncoseg contour`
    parser.add_argument("--no-refine", action="store_true", help="atlas labels only (no model)")
    parser.add_argument(
        "--checkpoint",
        help="fine-tuned weights of the refining model: a LoRA adapter file, a full state dict, or a name "
        "from `oncoseg train`",
    )
    parser.add_argument(
        "--from-start", action="store_true", help="first run: also process series already stored"
    )
    parser.add_argument("--max-attempts", type=int, default=3, help="attempts per series before giving up")
    parser.add_argument("--once", action="store_true", help="one pass over new series, then exit")
    parser.add_argument("--scp-port", type=int, help="also run a C-STORE SCP on this port (127.0.0.1)")
    parser.add_argument("--scp-aet", default="ONCOSEG", help="AE title of the C-STORE SCP (default ONCOSEG)")
    parser.add_argument(
        "--scp-host", default="127.0.0.1", help="address the C-STORE SCP binds (default 127.0.0.1)"
    )
    parser.add_argument("--workdir", help="folder for downloaded series (default: the system temp folder)")
    return parser


def run(args: argparse.Namespace) -> int:
    from oncoseg.assistant.service import Assistant, AssistantConfig
    from oncoseg.contour.cli import check_engine_arguments
    from oncoseg.logs import SafeFormatter, route_warnings

    check_engine_arguments(args)

    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])  # UIDs hashed, tracebacks without messages
    route_warnings(handler)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request is noise here
    auth = None
    if args.user:
        auth = (args.user, os.environ.get(args.password_env, "") if args.password_env else "")
    config = AssistantConfig(
        pacs_url=args.pacs,
        state=args.state,
        audit=args.audit,
        auth=auth,
        interval=args.interval,
        organs=[o.strip() for o in args.organs.split(",") if o.strip()] if args.organs else None,
        atlas=args.atlas,
        refine=not args.no_refine,
        checkpoint=args.checkpoint,
        engine=args.engine,
        model=args.model,
        label_map=args.label_map,
        from_start=args.from_start,
        max_attempts=args.max_attempts,
        workdir=args.workdir,
    )
    assistant = Assistant(config)
    assistant.prepare()  # PACS reachable, atlas and organs valid, model loaded — or one clear error now
    scp = None
    if args.scp_port:
        from oncoseg.assistant.scp import StoreSCP

        scp = StoreSCP(assistant, args.scp_host, args.scp_port, args.scp_aet).start()
    try:
        assistant.run(once=args.once)
    finally:
        if scp is not None:
            scp.stop()
    return 0

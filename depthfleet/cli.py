"""``depthfleet``: the command line. A thin layer over the pipeline, the HTTP client and processes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from depthfleet.shared.settings import Settings, SettingsError


HINTS = {
    "weights_invalid": "\n(set DEPTHFLEET_WEIGHTS to a local copy of midas_v21_small_256.pt, an "
                       "s3:// object or a reachable https:// URL; see README, 'The model and its weights')",
}


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-side", type=int, default=None,
                        help="cap the artifacts' longer side (default: the photo's own size)")
    parser.add_argument("--outputs", default=None,
                        help="comma list of depth_png,depth_pfm,heatmap_png (default: all)")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.max_side:
        options["max_side"] = args.max_side
    if args.outputs:
        options["outputs"] = [o.strip() for o in args.outputs.split(",") if o.strip()]
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthfleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="process files or folders in this process, no services")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None)
    _add_output_options(p)

    p = sub.add_parser("run", help="the whole system on this machine over a folder")
    p.add_argument("dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    p.add_argument("--threads", type=int, default=None, help="threads per worker process")
    _add_output_options(p)

    p = sub.add_parser("submit", help="send files or folders to a running deployment")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--server", required=True)
    p.add_argument("--api-key", default=None)
    p.add_argument("--wait", action="store_true", help="wait and download results")
    p.add_argument("--out", type=Path, default=None)
    _add_output_options(p)

    for name, helptext in (("status", "show a job's status"), ("fetch", "download a job's results")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job")
        p.add_argument("--server", required=True)
        p.add_argument("--api-key", default=None)
        if name == "fetch":
            p.add_argument("--out", type=Path, required=True)

    sub.add_parser("weights", help="fetch and verify the configured checkpoint; print path and sha256")

    p = sub.add_parser("api", help="serve the HTTP API (gunicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--processes", type=int, default=2)

    p = sub.add_parser("worker", help="run a Celery worker")
    p.add_argument("--concurrency", type=int, default=None, help="pool processes (default: cores)")
    p.add_argument("--threads", type=int, default=None, help="inference threads per process")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"depthfleet: {exc}")
    from depthfleet import commands
    from depthfleet.shared.errors import DepthFleetError

    handler = getattr(commands, args.command)
    try:
        sys.exit(handler(args, settings, _options(args) if hasattr(args, "max_side") else {}))
    except DepthFleetError as exc:
        sys.exit(f"depthfleet: {exc.message}{HINTS.get(exc.code, '')}")
    except KeyboardInterrupt:
        sys.exit("depthfleet: interrupted; run the same command again to resume")


if __name__ == "__main__":
    main()

"""``depthfleet``: the command line. A thin layer over the pipeline, the HTTP client and processes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from depthfleet.shared.settings import Settings, SettingsError


HINTS = {
    "weights_invalid": "\n(set DEPTHFLEET_WEIGHTS to a local copy of midas_v21_small_256.pt, an "
                       "s3:// object or a reachable https:// URL; see README, 'The model and its weights')",
}


OUTPUTS_HELP = {
    "write": "comma list of artifacts to write: the full-size depth_png, depth_pfm, heatmap_png "
             "(default: these three) or the compact depth_raw, heatmap_preview, thumbnail, "
             "photo; "
             "depth_raw alone means the whole compact set (a few hundred KB per photo, from "
             "which 'depthfleet render' draws the full-size files later), other names are "
             "written exactly",
    "render": "comma list of full-size artifacts to draw: depth_png, depth_pfm, heatmap_png "
              "(default: all three)",
}


def _outputs_arg(full_size_only: bool) -> Callable[[str], tuple[str, ...]]:
    """The ``--outputs`` parser: a bad name is a usage error (status 2) listing the known ones."""
    def parse(text: str) -> tuple[str, ...]:
        from depthfleet.outputs import chosen_outputs

        try:
            return chosen_outputs(text, full_size_only)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels >= 1, not {text!r}")
    return int(text)


def _add_output_options(parser: argparse.ArgumentParser, outputs_help: str = OUTPUTS_HELP["write"],
                        full_size_only: bool = False) -> None:
    parser.add_argument("--max-side", type=_positive, default=None,
                        help="cap the full-size artifacts' longer side (default: the photo's own)")
    parser.add_argument("--outputs", type=_outputs_arg(full_size_only), default=None,
                        help=outputs_help)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.max_side:
        options["max_side"] = args.max_side
    if args.outputs:
        options["outputs"] = list(args.outputs)
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
    _add_output_options(p, OUTPUTS_HELP["write"] + "; also stored by the job beside the compact "
                        "set (not given: the job stores the compact set, and --out gets the "
                        "three full-size files, rendered by the API)")

    for name, helptext in (("status", "show a job's status"), ("fetch", "download a job's results")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job")
        p.add_argument("--server", required=True)
        p.add_argument("--api-key", default=None)
        if name == "fetch":
            p.add_argument("--out", type=Path, required=True)
            _add_output_options(p, OUTPUTS_HELP["write"] + " (the API renders full-size files "
                                "of compact results on read)")

    p = sub.add_parser(
        "render", help="draw full-size files from the compact results (depth_raw) in a folder "
                       "of predict, run or fetch",
        description="For every succeeded record of DIR/manifest.jsonl with a depth_raw, write "
                    "the full-size files beside it (the bytes predict writes) and list them in "
                    "the manifest; no model is loaded. Records whose files are listed and on "
                    "disk are skipped, whatever size they were drawn at (delete them to draw "
                    "another size).")
    p.add_argument("dir", type=Path)
    p.add_argument("--threads", type=int, default=None, help="images rendered at once "
                                                             "(default: cores)")
    _add_output_options(p, OUTPUTS_HELP["render"], full_size_only=True)

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

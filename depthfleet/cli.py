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
             "(default: these three), the compact depth_raw, heatmap_preview, thumbnail, photo, "
             "or the 3D parallax_mp4 (a looping video) and mesh_glb (a textured relief); "
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


def _add_drawing_options(parser: argparse.ArgumentParser) -> None:
    """The options of the 3D artifacts (docs/api.md, Artifacts); the defaults are the API's."""
    parser.add_argument("--parallax-motion", type=float, default=None,
                        help="parallax_mp4: the nearest pixels' travel relative to the farthest, "
                             "as a fraction of the longer side, 0..0.1 (default 0.03)")
    parser.add_argument("--parallax-path", default=None,
                        help="parallax_mp4: circle (default), horizontal or vertical")
    parser.add_argument("--mesh-vertices", type=int, default=None,
                        help="mesh_glb: the vertex budget, 16..1048576 (default 65536)")
    parser.add_argument("--mesh-relief", type=float, default=None,
                        help="mesh_glb: the relief's thickness as a fraction of the longer "
                             "side, 0..1 (default 0.2)")


DRAWING_FLAGS = {"parallax": ("motion", "path"), "mesh": ("vertices", "relief")}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.max_side:
        options["max_side"] = args.max_side
    if args.outputs:
        options["outputs"] = list(args.outputs)
    for option, keys in DRAWING_FLAGS.items():
        given = {key: getattr(args, f"{option}_{key}") for key in keys
                 if getattr(args, f"{option}_{key}", None) is not None}
        if given:
            options[option] = given
    return options


def _checked_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The options of the command line, with the 3D ones checked as the API checks them."""
    from depthfleet.shared.artifacts import drawing_options

    options = _options(args)
    try:
        return {**options, **drawing_options(options, options.get("outputs", ()))}
    except ValueError as exc:
        parser.error(str(exc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthfleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="process files or folders in this process, no services")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None)
    _add_output_options(p)
    _add_drawing_options(p)

    p = sub.add_parser("run", help="the whole system on this machine over a folder")
    p.add_argument("dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    p.add_argument("--threads", type=int, default=None, help="threads per worker process")
    _add_output_options(p)
    _add_drawing_options(p)

    p = sub.add_parser("submit", help="send files or folders to a running deployment")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--server", required=True)
    p.add_argument("--api-key", default=None)
    p.add_argument("--wait", action="store_true", help="wait and download results")
    p.add_argument("--out", type=Path, default=None)
    _add_output_options(p, OUTPUTS_HELP["write"] + "; also stored by the job beside the compact "
                        "set (not given: the job stores the compact set, and --out gets the "
                        "three full-size files, rendered by the API)")
    _add_drawing_options(p)

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
    sub.add_parser("export-model", help="export the model to ONNX (needs the `export` extra) "
                   "and share it through DEPTHFLEET_STORAGE_URL with workers installed without it")

    p = sub.add_parser("api", help="serve the HTTP API (gunicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--processes", type=int, default=2)

    p = sub.add_parser("worker", help="run a Celery worker")
    p.add_argument("--concurrency", type=int, default=None, help="pool processes (default: cores)")
    p.add_argument("--threads", type=int, default=None, help="inference threads per process")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    options = _checked_options(parser, args) if hasattr(args, "max_side") else {}
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"depthfleet: {exc}")
    from depthfleet import commands
    from depthfleet.shared.errors import DepthFleetError

    handler = getattr(commands, args.command.replace("-", "_"))
    try:
        sys.exit(handler(args, settings, options))
    except DepthFleetError as exc:
        sys.exit(f"depthfleet: {exc.message}{HINTS.get(exc.code, '')}")
    except KeyboardInterrupt:
        sys.exit("depthfleet: interrupted; run the same command again to resume")


if __name__ == "__main__":
    main()

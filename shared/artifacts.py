"""Every artifact an item can have, and the one place each is made.

Two kinds:

* **compact**, made once per photo and stored: ``depth_raw`` (the network's output, float32
  TIFF at network resolution), ``heatmap_preview`` and ``thumbnail`` (JPEG, longer side at
  most ``PREVIEW_SIDE``, for the web page's grid) and ``photo`` (the upright photo as JPEG,
  longer side at most ``PHOTO_SIDE``: the web page's large view shows the original from the
  server, for any item, also after a reload or from inside an archive).
* **full-size**, the contract's ``depth.png``, ``depth.pfm`` and ``heatmap.png``: functions of
  ``depth_raw`` and the photo's size (``RawDepth.at``). They are rendered where they are asked
  for: on read by the API, by a worker when ``options.outputs`` asks to store them, by
  ``depthfleet predict`` and ``render``; always by ``render_full_size``, so every path gives
  the same bytes.

And, only when ``options.outputs`` names them, the 3D artifacts **drawn from the photo** and its
depth (``FROM_PHOTO``: ``parallax.mp4``, ``mesh.glb``), each with its own options object in the
job's options (``options.parallax``, ``options.mesh``). They need the photo's pixels, so they
are made where the photo is decoded (a worker, ``predict``) by ``make_from_photo``, and stored.

A new format is one encoder plus one ``ARTIFACTS`` entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from depthfleet.shared import mesh, parallax
from depthfleet.shared.depth import RawDepth
from depthfleet.shared.imaging.encode import (
    decode_float_tiff,
    encode_depth_png16,
    encode_heatmap_png,
    encode_jpeg,
    encode_pfm,
    heatmap_pixels,
)
from depthfleet.shared.imaging.tiff import encode_float_tiff

PREVIEW_SIDE = 512
PHOTO_SIDE = 2048  # the large view's original: a 1280 px screen at 1.5x, a 2x one nearly
# q80, not the previews' 85: a quarter smaller (a 640x640 photo: 59 KB, not 80), which keeps
# small photos' results within issue #13's 300 KB, and looks the same at screen size.
PHOTO_QUALITY = 80
RAW_FORMAT = 1  # meta.json's "raw_format": how depth_raw is to be read and upsampled
DRAWING_DEPTH_SIDE = parallax.MAX_SIDE  # the depth map the 3D artifacts are drawn from


@dataclass(frozen=True)
class Drawing:
    """How an artifact drawn from the photo is made: ``draw(rgb, depth, options, max_side)``
    with the options that ``parse`` reads from ``options[option]`` of a job (``to_dict``,
    ``token``: the stored form and what names the result folder)."""

    option: str
    parse: Callable[[object], Any]
    draw: Callable[[np.ndarray, np.ndarray, Any, int | None], bytes]


@dataclass(frozen=True)
class Artifact:
    """One artifact kind.

    ``name`` is what ``options.outputs`` and item records say; ``filename`` follows the item's
    stem on disk (``<stem>.depth.png``) and ends the API's artifact URLs. ``encode`` exists for
    full-size artifacts only: it turns the depth map at the item's size into the file;
    ``drawing`` for those drawn from the photo.
    """

    name: str
    filename: str
    content_type: str
    encode: Callable[[np.ndarray], bytes | bytearray] | None = None
    drawing: Drawing | None = None

    @property
    def full_size(self) -> bool:
        return self.encode is not None

    @property
    def compact(self) -> bool:
        return self.encode is None and self.drawing is None


ARTIFACTS: dict[str, Artifact] = {artifact.name: artifact for artifact in (
    Artifact("depth_png", "depth.png", "image/png", encode_depth_png16),
    Artifact("depth_pfm", "depth.pfm", "image/x-portable-floatmap", encode_pfm),
    Artifact("heatmap_png", "heatmap.png", "image/png", encode_heatmap_png),
    Artifact("depth_raw", "depth_raw.tiff", "image/tiff"),
    Artifact("heatmap_preview", "heatmap_preview.jpg", "image/jpeg"),
    Artifact("thumbnail", "thumbnail.jpg", "image/jpeg"),
    Artifact("photo", "photo.jpg", "image/jpeg"),
    Artifact("parallax_mp4", "parallax.mp4", "video/mp4", drawing=Drawing(
        "parallax", parallax.ParallaxOptions.parse, parallax.render_parallax)),
    Artifact("mesh_glb", "mesh.glb", "model/gltf-binary", drawing=Drawing(
        "mesh", mesh.MeshOptions.parse, mesh.render_mesh)),
)}
FULL_SIZE = tuple(name for name, spec in ARTIFACTS.items() if spec.full_size)
COMPACT = tuple(name for name, spec in ARTIFACTS.items() if spec.compact)
DRAWINGS = {name: spec.drawing for name, spec in ARTIFACTS.items() if spec.drawing}
FROM_PHOTO = tuple(DRAWINGS)
BY_FILENAME = {spec.filename: name for name, spec in ARTIFACTS.items()}


def check_names(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` without repeats, in catalog order; ValueError naming any unknown one."""
    wanted = set(names)
    unknown = sorted(wanted - set(ARTIFACTS))
    if unknown:
        raise ValueError(f"unknown artifacts {unknown}; known: {list(ARTIFACTS)}")
    return tuple(name for name in ARTIFACTS if name in wanted)


def stored_outputs(requested: Iterable[str]) -> tuple[str, ...]:
    """What a worker stores for ``options.outputs``: always the compact set, plus any
    full-size artifact asked for by name (for users who serve files straight from the bucket)
    and any drawn from the photo (made nowhere else)."""
    return check_names([*COMPACT, *requested])


def render_full_size(raw: RawDepth, names: Iterable[str], max_side: int | None = None,
                     depth: np.ndarray | None = None) -> dict[str, bytes | bytearray]:
    """The named full-size artifacts of ``raw`` at its photo's size (or ``max_side``).

    ``depth`` is ``raw.at(max_side)`` when the caller has it already.
    """
    names = [name for name in check_names(names) if ARTIFACTS[name].full_size]
    if not names:
        return {}
    depth = raw.at(max_side) if depth is None else depth
    return {name: ARTIFACTS[name].encode(depth) for name in names}  # type: ignore[misc]


def drawing_options(options: Mapping[str, Any], outputs: Iterable[str]) -> dict[str, Any]:
    """The option objects of the drawn artifacts in ``outputs``, checked, defaults filled in,
    as a job keeps them (``{"parallax": {"motion": 0.03, "path": "circle"}}``).

    ValueError for a bad value, or for options of an artifact that is not asked for (they
    would do nothing: a client that sends them surely meant to ask for it).
    """
    wanted = set(outputs)
    checked = {}
    for name, drawing in DRAWINGS.items():
        if name in wanted:
            checked[drawing.option] = drawing.parse(options.get(drawing.option)).to_dict()
        elif options.get(drawing.option) is not None:
            raise ValueError(f"options.{drawing.option} applies to {name}, which options.outputs "
                             "does not name")
    return checked


def stored_names(outputs: Iterable[str], options: Mapping[str, Any]) -> list[str]:
    """What a result folder's name lists beyond the compact set: the full-size artifacts
    stored and each drawn one with its options' token (``parallax_mp4-circle0.03``), so
    results drawn with other options never mix."""
    names = []
    for name in check_names(outputs):
        if name in DRAWINGS:
            names.append(f"{name}-{_options_of(name, options).token}")
        elif ARTIFACTS[name].full_size:
            names.append(name)
    return names


def _options_of(name: str, options: Mapping[str, Any]) -> Any:
    """The checked options object of drawn artifact ``name`` in a job's ``options``."""
    drawing = DRAWINGS[name]
    return drawing.parse(options.get(drawing.option))


def make_from_photo(raw: RawDepth, rgb: np.ndarray, names: Iterable[str],
                    options: Mapping[str, Any], max_side: int | None = None) -> dict[str, bytes]:
    """The named artifacts drawn from the photo: ``rgb`` upright (perhaps decoded smaller),
    its depth drawn at the video's size at most (enough for both, and cheap)."""
    drawn = [name for name in check_names(names) if name in DRAWINGS]
    if not drawn:
        return {}
    depth = raw.at(DRAWING_DEPTH_SIDE if max_side is None else min(DRAWING_DEPTH_SIDE, max_side))
    return {name: DRAWINGS[name].draw(rgb, depth, _options_of(name, options), max_side)
            for name in drawn}


def make_compact(raw: RawDepth, rgb: np.ndarray, names: Iterable[str]) -> dict[str, bytes]:
    """The named compact artifacts; ``rgb`` is the upright photo (perhaps decoded smaller)."""
    makers: dict[str, Callable[[], bytes]] = {
        "depth_raw": lambda: encode_float_tiff(raw.net),
        "heatmap_preview": lambda: encode_jpeg(heatmap_pixels(raw.at(PREVIEW_SIDE))),
        "thumbnail": lambda: encode_jpeg(thumbnail_pixels(rgb)),
        "photo": lambda: encode_jpeg(thumbnail_pixels(rgb, PHOTO_SIDE), PHOTO_QUALITY),
    }
    return {name: makers[name]() for name in check_names(names) if name in makers}


def thumbnail_pixels(rgb: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    """The photo shrunk by a whole factor to a longer side of at most ``side``.

    A whole factor keeps OpenCV's area averaging on its fast path: the rows and columns that
    do not fill a block are left out by a view (OpenCV takes the row stride as it is, no
    copy), so 1411x1411 shrinks in 3 ms instead of 8, and 4001x3000 in 11 ms instead of 35.
    """
    factor = -(-max(rgb.shape[:2]) // side)  # ceiling division
    if factor <= 1:
        return rgb
    height = max(1, rgb.shape[0] // factor)
    width = max(1, rgb.shape[1] // factor)
    blocks = rgb[:height * factor, :width * factor]
    return cv2.resize(blocks, (width, height), interpolation=cv2.INTER_AREA)


def raw_depth(data: bytes, width: int, height: int) -> RawDepth:
    """``depth_raw``'s bytes and the photo's size (from the item or meta.json) -> ``RawDepth``."""
    return RawDepth(decode_float_tiff(data), width, height)


def result_meta(raw: RawDepth, depth_min: float, depth_max: float,
                artifacts: dict[str, str]) -> dict[str, object]:
    """meta.json of a stored result: everything needed to rebuild the full-size maps exactly."""
    return {
        "width": raw.width, "height": raw.height, "depth_min": depth_min, "depth_max": depth_max,
        "raw_format": RAW_FORMAT, "network_size": [int(raw.net.shape[1]), int(raw.net.shape[0])],
        "upsampling": "bicubic, OpenCV INTER_CUBIC (a=-0.75, half-pixel centers) to width x height",
        "artifacts": artifacts,
    }

"""One photo's bytes to its artifacts: decode, predict, encode. Used by workers and ``predict``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from depthfleet.shared.artifacts import make_compact, make_from_photo, render_full_size
from depthfleet.shared.depth import RawDepth, finite_range
from depthfleet.shared.imaging.decode import Draft, decode_draft, decode_image
from depthfleet.shared.metrics import observe_stage
from depthfleet.shared.pipeline import NETWORK_SIDE, DepthEstimator

DRAFT_MIN_SIDE = 4 * NETWORK_SIDE  # a drafted photo keeps 4x the network's resolution


@dataclass
class Rendered:
    """The artifacts of one photo and the facts an item record keeps about it.

    ``width``/``height`` are the photo's upright size; full-size artifacts have that size
    unless ``max_side`` capped them, and ``depth_min``/``depth_max`` are those of that map.
    """

    width: int
    height: int
    depth_min: float
    depth_max: float
    artifacts: dict[str, bytes | bytearray]
    raw: RawDepth

    def summary(self) -> dict[str, float | int]:
        return {"width": self.width, "height": self.height,
                "depth_min": self.depth_min, "depth_max": self.depth_max}


def render(data: bytes, estimator: DepthEstimator, outputs: Sequence[str],
           max_side: int | None, max_pixels: int,
           options: Mapping[str, Any] | None = None) -> Rendered:
    """The named ``outputs`` (compact, full-size, drawn from the photo) of one photo;
    ``options`` are the job's (``parallax``, ``mesh``: those of the drawn artifacts).

    Raises ``InputError`` for bad photos; anything else is a fault of ours or the machine's.
    """
    with observe_stage("decode"):
        photo = _decode(data, estimator, max_pixels)
    with observe_stage("inference"):
        net = estimator.predict_raw(photo.rgb)
    raw = RawDepth(net, photo.width, photo.height)
    with observe_stage("encode"):
        depth = raw.at(max_side)  # for the range even when no full-size artifact is stored
        low, high = finite_range(depth)
        artifacts = {**render_full_size(raw, outputs, max_side, depth),
                     **make_compact(raw, photo.rgb, outputs)}
        del depth  # 48 MB at 12 MP, not held while the 3D artifacts are drawn
        artifacts.update(make_from_photo(raw, photo.rgb, outputs, options or {}, max_side))
    return Rendered(width=photo.width, height=photo.height, depth_min=low, depth_max=high,
                    artifacts=artifacts, raw=raw)


def _decode(data: bytes, estimator: DepthEstimator, max_pixels: int) -> Draft:
    if estimator.draft_decode:
        return decode_draft(data, max_pixels, DRAFT_MIN_SIDE)
    rgb = decode_image(data, max_pixels)
    return Draft(rgb, int(rgb.shape[1]), int(rgb.shape[0]))

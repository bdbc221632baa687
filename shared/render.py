"""One photo's bytes to its artifacts: decode, predict, encode. Used by workers and ``predict``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from depthfleet.shared.imaging.decode import Draft, decode_draft, decode_image
from depthfleet.shared.imaging.encode import encode_artifacts
from depthfleet.shared.metrics import observe_stage
from depthfleet.shared.pipeline import NETWORK_SIDE, DepthEstimator

DRAFT_MIN_SIDE = 4 * NETWORK_SIDE  # a drafted photo keeps 4x the network's resolution


@dataclass
class Rendered:
    """The artifacts of one photo and the facts an item record keeps about it.

    ``width``/``height`` are the photo's upright size; the artifacts have that size unless
    ``max_side`` capped them.
    """

    width: int
    height: int
    depth_min: float
    depth_max: float
    artifacts: dict[str, bytes | bytearray]

    def summary(self) -> dict[str, float | int]:
        return {"width": self.width, "height": self.height,
                "depth_min": self.depth_min, "depth_max": self.depth_max}


def render(data: bytes, estimator: DepthEstimator, outputs: Sequence[str],
           max_side: int | None, max_pixels: int) -> Rendered:
    """Raises ``InputError`` for bad photos; anything else is a fault of ours or the machine's."""
    with observe_stage("decode"):
        photo = _decode(data, estimator, max_pixels)
    with observe_stage("inference"):
        depth = estimator.predict(photo.rgb, max_side, (photo.height, photo.width)).depth
    low, high = _finite_range(depth)
    with observe_stage("encode"):
        artifacts = encode_artifacts(depth, outputs)
    return Rendered(width=photo.width, height=photo.height, depth_min=low, depth_max=high,
                    artifacts=artifacts)


def _finite_range(depth: np.ndarray) -> tuple[float, float]:
    """Min and max of the finite values (0, 0 if none), without a 12 MP copy in the usual case."""
    low, high = float(depth.min()), float(depth.max())
    if np.isfinite(low) and np.isfinite(high):  # NaN would propagate, an infinity be an end
        return low, high
    finite = depth[np.isfinite(depth)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def _decode(data: bytes, estimator: DepthEstimator, max_pixels: int) -> Draft:
    if estimator.draft_decode:
        return decode_draft(data, max_pixels, DRAFT_MIN_SIDE)
    rgb = decode_image(data, max_pixels)
    return Draft(rgb, int(rgb.shape[1]), int(rgb.shape[0]))

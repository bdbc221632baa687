"""One photo's bytes to its artifacts: decode, predict, encode. Used by workers and ``predict``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from depthfleet.shared.imaging.decode import decode_image
from depthfleet.shared.imaging.encode import encode_artifacts
from depthfleet.shared.pipeline import DepthEstimator


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
    artifacts: dict[str, bytes]

    def summary(self) -> dict[str, float | int]:
        return {"width": self.width, "height": self.height,
                "depth_min": self.depth_min, "depth_max": self.depth_max}


def render(data: bytes, estimator: DepthEstimator, outputs: Sequence[str],
           max_side: int | None, max_pixels: int) -> Rendered:
    """Raises ``InputError`` for bad photos; anything else is a fault of ours or the machine's."""
    rgb = decode_image(data, max_pixels)
    depth = estimator.predict(rgb, max_side=max_side).depth
    finite = depth[np.isfinite(depth)]
    return Rendered(
        width=int(rgb.shape[1]), height=int(rgb.shape[0]),
        depth_min=float(finite.min()) if finite.size else 0.0,
        depth_max=float(finite.max()) if finite.size else 0.0,
        artifacts=encode_artifacts(depth, outputs),
    )

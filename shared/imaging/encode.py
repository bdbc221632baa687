"""The per-item artifacts of the contract, byte-compatible with the official MiDaS writers.

``depth.png`` and ``heatmap.png`` carry exactly the pixels of ``utils.write_depth`` (16-bit
grayscale with ``--grayscale``, else 8-bit Inferno), ``depth.pfm`` exactly the bytes of
``utils.write_pfm``. A new format is one encoder plus one ``ARTIFACTS`` entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from depthfleet.shared.imaging.png import encode_png

_FLOAT_EPS = np.finfo(float).eps
# OpenCV's Inferno lookup table (BGR) turned into RGB, so one applyColorMap writes file order.
_INFERNO_RGB = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1),
                                 cv2.COLORMAP_INFERNO)[:, :, ::-1].copy()
_PFM_HEADER = re.compile(rb"(P[Ff])\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s")


def normalize(depth: np.ndarray, max_value: float = 1.0) -> np.ndarray:
    """Min-max scale to [0, max_value] exactly as the official ``write_depth`` does.

    Same operations in the same order and dtype, so truncating the result gives its PNG pixels
    bit for bit: non-finite values become 0 before the min and max are taken, and a range not
    above float64 eps gives all zeros.
    """
    if not np.isfinite(depth).all():
        depth = np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = depth.min(), depth.max()
    if high - low > _FLOAT_EPS:
        return max_value * (depth - low) / (high - low)
    return np.zeros(depth.shape, dtype=depth.dtype)


def encode_depth_png16(depth: np.ndarray) -> bytes:
    """16-bit grayscale PNG of the min-max scaled depth, bright = near (``run.py --grayscale``)."""
    return encode_png(normalize(depth, 65535).astype(np.uint16))


def encode_heatmap_png(depth: np.ndarray) -> bytes:
    """8-bit RGB PNG: OpenCV's Inferno colormap of the depth scaled to 0..255 (``run.py``)."""
    return encode_png(cv2.applyColorMap(np.uint8(normalize(depth, 255)), _INFERNO_RGB))


def encode_pfm(depth: np.ndarray) -> bytes:
    """``write_pfm``'s bytes: "Pf", "W H", scale -1 (little-endian), float32 rows bottom to top."""
    height, width = depth.shape
    rows = np.ascontiguousarray(depth[::-1], dtype="<f4")
    return b"".join((b"Pf\n%d %d\n%f\n" % (width, height, -1.0), rows.data))


def decode_pfm(data: bytes) -> np.ndarray:
    """The float32 image of a PFM file (HxW, or HxWx3 for "PF"), top row first."""
    header = _PFM_HEADER.match(data)
    if header is None:
        raise ValueError("not a PFM file")
    kind, width, height, scale = header.groups()
    shape = (int(height), int(width), 3) if kind == b"PF" else (int(height), int(width))
    dtype = "<f4" if float(scale) < 0 else ">f4"
    pixels = np.frombuffer(data, dtype, count=int(np.prod(shape)), offset=header.end())
    return pixels.reshape(shape)[::-1].astype(np.float32)


@dataclass(frozen=True)
class Artifact:
    """One output format of the contract.

    ``name`` is what ``options.outputs`` and the item records say; ``filename`` follows the
    item's stem on disk (``<stem>.depth.png``) and ends the API's artifact URLs.
    """

    name: str
    filename: str
    content_type: str
    encode: Callable[[np.ndarray], bytes]


ARTIFACTS: dict[str, Artifact] = {artifact.name: artifact for artifact in (
    Artifact("depth_png", "depth.png", "image/png", encode_depth_png16),
    Artifact("depth_pfm", "depth.pfm", "image/x-portable-floatmap", encode_pfm),
    Artifact("heatmap_png", "heatmap.png", "image/png", encode_heatmap_png),
)}
DEFAULT_OUTPUTS = tuple(ARTIFACTS)


def encode_artifacts(depth: np.ndarray,
                     outputs: Iterable[str] = DEFAULT_OUTPUTS) -> dict[str, bytes]:
    """Encode ``depth`` (float32 HxW) as each named artifact: ``{name: bytes}``."""
    names = tuple(dict.fromkeys(outputs))
    unknown = [name for name in names if name not in ARTIFACTS]
    if unknown:
        raise ValueError(f"unknown artifacts {unknown}; known: {list(ARTIFACTS)}")
    return {name: ARTIFACTS[name].encode(depth) for name in names}

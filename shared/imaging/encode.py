"""The per-item artifacts of the contract, byte-compatible with the official MiDaS writers.

``depth.png`` and ``heatmap.png`` carry exactly the pixels of ``utils.write_depth`` (16-bit
grayscale with ``--grayscale``, else 8-bit Inferno), ``depth.pfm`` exactly the bytes of
``utils.write_pfm``. A new format is one encoder plus one ``ARTIFACTS`` entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from depthfleet.shared.imaging.png import encode_png_strips

_FLOAT_EPS = np.finfo(float).eps
# OpenCV's Inferno lookup table (BGR) turned into RGB, so one applyColorMap writes file order.
_INFERNO_RGB = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1),
                                 cv2.COLORMAP_INFERNO)[:, :, ::-1].copy()
_PFM_HEADER = re.compile(rb"(P[Ff])\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s")


STRIP_ROWS = 128  # 128 rows of a 12 MP map: 2 MB of float32, so every pass stays in cache


def normalize(depth: np.ndarray, max_value: float = 1.0) -> np.ndarray:
    """Min-max scale to [0, max_value] exactly as the official ``write_depth`` does.

    Same operations in the same order and dtype, so truncating the result gives its PNG pixels
    bit for bit: non-finite values become 0 before the min and max are taken, and a range not
    above float64 eps gives all zeros.
    """
    return np.concatenate(list(_scaled_strips(depth, max_value, depth.dtype)))


def _scaled_strips(depth: np.ndarray, max_value: float, dtype: np.dtype | str) -> Iterator[np.ndarray]:
    """``normalize(depth, max_value).astype(dtype)`` in strips of ``STRIP_ROWS`` rows.

    At 12 MP, the whole-image way reads and writes a 48 MB array per arithmetic step; strip by
    strip, the depth map is read once and the steps run in cache.
    """
    if not np.isfinite(depth).all():
        depth = np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = depth.min(), depth.max()
    for start in range(0, len(depth), STRIP_ROWS):
        strip = depth[start:start + STRIP_ROWS]
        if high - low > _FLOAT_EPS:
            scaled = np.subtract(strip, low)
            np.multiply(max_value, scaled, out=scaled, casting="same_kind")
            yield np.divide(scaled, high - low, out=scaled, casting="same_kind").astype(dtype)
        else:
            yield np.zeros(strip.shape, dtype)


def encode_depth_png16(depth: np.ndarray) -> bytes:
    """16-bit grayscale PNG of the min-max scaled depth, bright = near (``run.py --grayscale``)."""
    return encode_png_strips(_scaled_strips(depth, 65535, ">u2"))  # PNG's byte order


def encode_heatmap_png(depth: np.ndarray) -> bytes:
    """8-bit RGB PNG: OpenCV's Inferno colormap of the depth scaled to 0..255 (``run.py``)."""
    return encode_png_strips(cv2.applyColorMap(strip, _INFERNO_RGB)
                             for strip in _scaled_strips(depth, 255, np.uint8))


def encode_pfm(depth: np.ndarray) -> bytearray:
    """``write_pfm``'s bytes: "Pf", "W H", scale -1 (little-endian), float32 rows bottom to top.

    The rows are flipped straight into the output buffer: one copy of the 46 MB of a 12 MP
    map instead of three (flip, join, bytes).
    """
    height, width = depth.shape
    header = b"Pf\n%d %d\n%f\n" % (width, height, -1.0)
    pfm = bytearray(len(header) + 4 * depth.size)
    pfm[:len(header)] = header
    rows = np.frombuffer(pfm, "<f4", offset=len(header)).reshape(height, width)
    rows[:] = depth[::-1]
    return pfm


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
    encode: Callable[[np.ndarray], bytes | bytearray]


ARTIFACTS: dict[str, Artifact] = {artifact.name: artifact for artifact in (
    Artifact("depth_png", "depth.png", "image/png", encode_depth_png16),
    Artifact("depth_pfm", "depth.pfm", "image/x-portable-floatmap", encode_pfm),
    Artifact("heatmap_png", "heatmap.png", "image/png", encode_heatmap_png),
)}
DEFAULT_OUTPUTS = tuple(ARTIFACTS)


def encode_artifacts(depth: np.ndarray,
                     outputs: Iterable[str] = DEFAULT_OUTPUTS) -> dict[str, bytes | bytearray]:
    """Encode ``depth`` (float32 HxW) as each named artifact: ``{name: bytes}``."""
    names = tuple(dict.fromkeys(outputs))
    unknown = [name for name in names if name not in ARTIFACTS]
    if unknown:
        raise ValueError(f"unknown artifacts {unknown}; known: {list(ARTIFACTS)}")
    return {name: ARTIFACTS[name].encode(depth) for name in names}

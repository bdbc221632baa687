"""Encoders of the artifacts, the full-size ones byte-compatible with the official MiDaS writers.

``depth.png`` and ``heatmap.png`` carry exactly the pixels of ``utils.write_depth`` (16-bit
grayscale with ``--grayscale``, else 8-bit Inferno), ``depth.pfm`` exactly the bytes of
``utils.write_pfm``. The compact ones: the network's output as a float32 TIFF (lossless,
deflated; GDAL, OpenCV, Pillow, tifffile and ImageJ read it) and small JPEG previews.
Which artifact uses which encoder is ``shared.artifacts``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import cv2
import numpy as np
from numpy.typing import DTypeLike

from depthfleet.shared.imaging.png import encode_png_strips

_FLOAT_EPS = np.finfo(float).eps
# OpenCV's Inferno lookup table (BGR) turned into RGB, so one applyColorMap writes file order.
_INFERNO_RGB = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1),
                                 cv2.COLORMAP_INFERNO)[:, :, ::-1].copy()
_PFM_HEADER = re.compile(rb"(P[Ff])\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s")


JPEG_QUALITY = 85
STRIP_ROWS = 128  # 128 rows of a 12 MP map: 2 MB of float32, so every pass stays in cache


def normalize(depth: np.ndarray, max_value: float = 1.0) -> np.ndarray:
    """Min-max scale to [0, max_value] exactly as the official ``write_depth`` does.

    Same operations in the same order and dtype, so truncating the result gives its PNG pixels
    bit for bit: non-finite values become 0 before the min and max are taken, and a range not
    above float64 eps gives all zeros.
    """
    return np.concatenate(list(_scaled_strips(depth, max_value, depth.dtype)))


def _scaled_strips(depth: np.ndarray, max_value: float, dtype: DTypeLike) -> Iterator[np.ndarray]:
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


def heatmap_pixels(depth: np.ndarray) -> np.ndarray:
    """The heatmap's RGB pixels, whole (for small maps: the preview)."""
    return cv2.applyColorMap(normalize(depth, 255).astype(np.uint8), _INFERNO_RGB)


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG of HxWx3 RGB pixels: ~0.3 ms at 512 px, against ~10 ms for WebP."""
    # cvtColor, not a reversed-channel view: numpy copies that one element by element (0.5 ms
    # at 512 px, 65 ms at 12 MP, against 0.01 and 11 ms).
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot write pixels of shape {rgb.shape} as JPEG")
    return data.tobytes()


def decode_float_tiff(data: bytes) -> np.ndarray:
    """The (H, W) float32 values of a single-channel float32 TIFF (``encode_float_tiff``'s,
    or OpenCV's from before it); ValueError for anything else."""
    values = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if values is None or values.dtype != np.float32 or values.ndim != 2:
        raise ValueError("not a single-channel float32 TIFF")
    return values


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

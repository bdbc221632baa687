"""A small PNG writer, fast on full-size depth maps.

A PNG is a signature and a few chunks around one zlib stream of filtered scanlines. OpenCV and
Pillow deflate with zlib: a 4032x3024 16-bit depth map takes them 340-445 ms at level 1 (11.7 MB).
ISA-L's deflate over Up-filtered rows writes it in about 70 ms (9.5 MB). Measured on upsampled
MiDaS predictions: Up gave the smallest files of None, Sub, Up and Average at no extra cost, and
ISA-L level 1 the best size for the time. The bytes depend only on the pixels.
"""

from __future__ import annotations

import struct
from itertools import chain

import numpy as np
from isal import isal_zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
IDAT_CHUNK_BYTES = 1 << 20
DEFLATE_LEVEL = 1
_COLOR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (grayscale, truecolour)
_FILTER_UP = 2


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of ``pixels``: HxW gray or HxWx3 RGB, uint8 or uint16."""
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim not in (2, 3):
        raise ValueError(f"cannot write {pixels.dtype} pixels of shape {pixels.shape} as PNG")
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels not in _COLOR_TYPES:
        raise ValueError(f"cannot write {channels} channels as PNG (1 or 3)")
    header = struct.pack(">IIBBBBB", width, height, 8 * pixels.itemsize, _COLOR_TYPES[channels],
                         0, 0, 0)  # deflate, adaptive filtering, no interlace
    stream = memoryview(isal_zlib.compress(_up_filtered(pixels), DEFLATE_LEVEL))
    idat = (_chunk(b"IDAT", stream[i:i + IDAT_CHUNK_BYTES])
            for i in range(0, len(stream), IDAT_CHUNK_BYTES))
    chunks = (_chunk(b"IHDR", header), *idat, _chunk(b"IEND", b""))
    return b"".join(chain((SIGNATURE,), *chunks))


def _up_filtered(pixels: np.ndarray) -> np.ndarray:
    """Scanlines as PNG stores them: filter-type byte, then each byte minus the one above."""
    rows = np.ascontiguousarray(pixels, pixels.dtype.newbyteorder(">"))  # PNG is big-endian
    rows = rows.reshape(len(rows), -1).view(np.uint8)
    filtered = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = _FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    return filtered


def _chunk(kind: bytes, data: bytes | memoryview) -> tuple[bytes, bytes | memoryview, bytes]:
    """A chunk as parts (length and type, data, CRC), joined once by the caller."""
    crc = isal_zlib.crc32(data, isal_zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind, data, struct.pack(">I", crc)

"""The two workloads every path is measured on, written into a scratch folder.

* small: the JPEG and PNG photos of ``shared/testdata/photos`` (0.0001-2 MP) that the official
  loop can process, each repeated ``copies`` times. Every copy carries a distinct comment
  (a JPEG COM segment, a PNG tEXt chunk) and so distinct bytes: the system computes a
  photo's bytes once per tenant, and identical copies would only measure that shortcut.
  The pixels stay those of the original.
* big: ``count`` 12 MP JPEGs (4032x3024, quality 92) made from the small photos: cropped to
  4:3, upscaled bicubically, with a little seeded sensor-like grain (sigma 3) so that
  decoding them costs what decoding a camera photo costs rather than a blurry upscale's.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

REFERENCE = Path(__file__).resolve().parents[2] / "shared"
PHOTOS = REFERENCE / "testdata" / "photos"
SMALL_SUFFIXES = (".jpg", ".png")
SMALL_MAX_PIXELS = 2_000_000
BIG_SIZE = (4032, 3024)
BIG_QUALITY = 92
GRAIN_SIGMA = 3.0
NET_SIDE, MULTIPLE = 256, 32


def official_can_process(path: Path) -> bool:
    """Whether MiDaS ``run.py`` gets through this file (it crashes on 1-pixel sides and on
    photos so elongated that a network side rounds to 0)."""
    image = cv2.imread(str(path))
    if image is None or min(image.shape[:2]) < 2:
        return False
    scale = NET_SIDE / max(image.shape[:2])
    return round(min(image.shape[:2]) * scale / MULTIPLE) > 0


def small_photos() -> list[Path]:
    """The small photos of the reference set that both pipelines can process."""
    candidates = sorted(p for p in PHOTOS.iterdir() if p.suffix in SMALL_SUFFIXES)
    return [p for p in candidates
            if _pixels(p) <= SMALL_MAX_PIXELS and official_can_process(p)]


def _pixels(path: Path) -> int:
    height, width = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
    return height * width


def tagged(data: bytes, tag: bytes) -> bytes:
    """``data`` (JPEG or PNG) with a comment holding ``tag``: new bytes, same pixels."""
    if data.startswith(b"\xff\xd8"):  # a COM segment right after SOI
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(tag) + 2) + tag + data[2:]
    if data.startswith(b"\x89PNG\r\n\x1a\n"):  # a tEXt chunk right after IHDR (8 + 25 bytes)
        body = b"Comment\x00" + tag
        chunk = struct.pack(">I", len(body)) + b"tEXt" + body
        chunk += struct.pack(">I", zlib.crc32(b"tEXt" + body))
        return data[:33] + chunk + data[33:]
    raise ValueError("only JPEG and PNG photos can be tagged")


def make_small(folder: Path, copies: int) -> list[Path]:
    """``copies`` distinct-byte copies of every small photo, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for copy in range(copies):
        for photo in small_photos():
            target = folder / f"{copy:03d}-{photo.name}"
            target.write_bytes(tagged(photo.read_bytes(), b"depthfleet bench copy %d" % copy))
            written.append(target)
    return written


def make_big(folder: Path, count: int) -> list[Path]:
    """``count`` 12 MP JPEGs in ``folder``, made from the small photos in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, photo in zip(range(count), _cycle(small_photos())):
        target = folder / f"{index:03d}-{photo.stem}.jpg"
        pixels = _phone_sized(cv2.imread(str(photo)), np.random.default_rng(index))
        cv2.imwrite(str(target), pixels, [cv2.IMWRITE_JPEG_QUALITY, BIG_QUALITY])
        written.append(target)
    return written


def _cycle(photos: list[Path]) -> Iterator[Path]:
    while True:
        yield from photos


def _phone_sized(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The central 4:3 crop, upscaled to 4032x3024, with grain."""
    height, width = bgr.shape[:2]
    unit = min(width // 4, height // 3)
    top, left = (height - 3 * unit) // 2, (width - 4 * unit) // 2
    crop = bgr[top:top + 3 * unit, left:left + 4 * unit]
    big = cv2.resize(crop, BIG_SIZE, interpolation=cv2.INTER_CUBIC).astype(np.float32)
    big += rng.normal(0.0, GRAIN_SIGMA, big.shape).astype(np.float32)
    return np.clip(big, 0, 255).astype(np.uint8)

"""Bytes in, upright RGB out: format sniffing, header checks and decoding of user photos.

The official MiDaS reader is ``cv2.imread(path)`` (IMREAD_COLOR) followed by BGR->RGB, so the
pixels come from OpenCV wherever it reads the format (every format here but HEIF; JPEG 2000
through the OpenJPEG that Pillow and OpenCV both use) and are
bit-identical to it: alpha dropped, gray replicated, palettes expanded, 16-bit samples reduced
as OpenCV does (PNG keeps the high byte, TIFF rounds v/257), CMYK converted by OpenCV.

Pillow reads the headers (size, EXIF orientation, frames) and closes the two holes OpenCV
leaves: it decodes decompression bombs without a limit, and it turns damaged JPEG scan data
into a garbled picture with only a printed warning.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import pillow_heif
from PIL import ExifTags, Image

from depthfleet.shared.errors import InputError

# Our own limit, checked in probe() from the header before anything is decoded, is the only one
# that decides. Pillow's would only warn between 1x and 2x its default of 89.5 MP (and then
# decode), and a Pillow limit below ours would reject photos the settings allow.
Image.MAX_IMAGE_PIXELS = None
pillow_heif.register_heif_opener()

SNIFF_BYTES = 4096
FRAMES_COUNTED = 16  # ImageInfo.frames stops counting here: only frame 0 is used
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "HEIF", "JPEG2000")
_ACCEPTED = "accepted formats: " + ", ".join(SUPPORTED_FORMATS)

_J2K_START = b"\xff\x4f\xff\x51"  # a JPEG 2000 codestream: SOC, then the SIZ marker
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"\0\0\0\x0cjP  \r\n\x87\n", "JPEG2000"),  # JP2 (and JPX): the signature box
    (_J2K_START, "JPEG2000"),  # J2K: a bare codestream
)
_UNSUPPORTED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "PDF"),
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
)
_NON_IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive"),
    (b"PK\x05\x06", "a ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
)
_BMP_INFO_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs",
                          b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_SVG_START = re.compile(
    r"(?:\s|<\?xml.*?\?>|<!--.*?-->|<!doctype\s+svg(?:[^>\[]|\[.*?\])*>)*<svg[\s>:/]",
    re.IGNORECASE | re.DOTALL,
)

_OPENCV_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
# EXIF Orientation -> the transform that makes the stored pixels upright (as cv2.imread does).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: cv2.transpose,
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


@dataclass(frozen=True)
class ImageInfo:
    """What the header declares; width and height as the photo is viewed (EXIF applied)."""

    format: str  # one of SUPPORTED_FORMATS (Pillow's names)
    width: int
    height: int
    frames: int  # frames/pages, counted up to FRAMES_COUNTED (more report FRAMES_COUNTED)
    orientation: int = 1  # EXIF Orientation 1..8; 5..8 swap the stored width and height


def sniff_format(head: bytes) -> str:
    """The image format of data starting with ``head``, from magic bytes alone.

    File names and Content-Types lie (an HTML error page saved as .png), so neither is asked.
    Raises ``InputError`` ``empty_file``, ``unsupported_format`` (documents, vector art, AVIF)
    or ``not_an_image``.
    """
    if not head:
        raise InputError("empty_file", "the file is empty")
    image_format = _image_format(head)
    if image_format:
        return image_format
    unsupported = _unsupported_kind(head)
    if unsupported:
        raise InputError("unsupported_format",
                         f"{unsupported} files are not supported; {_ACCEPTED}")
    raise InputError("not_an_image", f"{_non_image_kind(head)} is not an image; {_ACCEPTED}")


def probe(data: bytes, max_pixels: int) -> ImageInfo:
    """Format, upright size and frame count from the header, without decoding any pixels.

    Rejects zero sizes (``invalid_dimensions``), more than ``max_pixels`` pixels
    (``too_many_pixels``) and unreadable headers (``corrupt_image``).
    """
    with _opened(data, max_pixels) as (_, info):
        return info


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """The upright first frame as HxWx3 uint8 RGB, bit-identical to the official reader.

    Everything ``probe`` rejects is rejected before decoding; damaged or truncated pixel data
    raises ``InputError("corrupt_image")``. No other exception escapes (bar MemoryError).
    """
    with _opened(data, max_pixels) as (image, info):
        stored = _stored_pixels(image, data, info.format)
    return _upright(stored, info)


@dataclass(frozen=True)
class Draft:
    """A photo decoded for the network only: ``rgb`` may be smaller than the photo itself."""

    rgb: np.ndarray  # upright HxWx3 uint8 RGB
    width: int  # the photo's upright size, which the artifacts keep
    height: int


def decode_draft(data: bytes, max_pixels: int, min_side: int) -> Draft:
    """Like ``decode_image``, but big JPEGs come out at 1/2 scale (inexact, opt-in).

    libjpeg's DCT scaling skips most of the IDCT and colour work, and Pillow's decode also
    finds damaged scan data, so the separate check pass is saved too: 12 MP in about 35 ms
    instead of 85. A JPEG is halved only while its longer side stays >= ``min_side``. The
    smaller image is an area-averaged one where the official path samples the full image
    without antialiasing, so depth moves by about 1e-2 of its range (docs/performance.md).
    """
    with _opened(data, max_pixels) as (image, info):
        if info.format != "JPEG" or max(image.size) < 2 * min_side:
            return Draft(_upright(_stored_pixels(image, data, info.format), info), info.width,
                         info.height)
        image.draft("RGB", ((image.width + 1) // 2, (image.height + 1) // 2))
        stored = np.asarray(image.convert("RGB"))
    return Draft(_upright(stored, info), info.width, info.height)


def _upright(stored: np.ndarray, info: ImageInfo) -> np.ndarray:
    upright = _UPRIGHT.get(info.orientation)
    return upright(stored) if upright else stored


def _image_format(head: bytes) -> str | None:
    for magic, image_format in _SIGNATURES:
        if head.startswith(magic):
            return image_format
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_INFO_HEADER_SIZES:
        return "BMP"
    brands = _ftyp_brands(head)
    if brands & _HEIF_BRANDS and not brands & _AVIF_BRANDS:
        return "HEIF"
    return None


def _unsupported_kind(head: bytes) -> str | None:
    for magic, kind in _UNSUPPORTED_SIGNATURES:
        if head.startswith(magic):
            return kind
    if _ftyp_brands(head) & _AVIF_BRANDS:
        return "AVIF"
    if _SVG_START.match(_as_text(head)):
        return "SVG"
    return None


def _non_image_kind(head: bytes) -> str:
    for magic, kind in _NON_IMAGE_SIGNATURES:
        if head.startswith(magic):
            return kind
    return "the file"


def _ftyp_brands(head: bytes) -> frozenset[bytes]:
    """Major and compatible brands of an ISO-BMFF ``ftyp`` box (HEIF, AVIF, MP4, ...)."""
    if head[4:8] != b"ftyp":
        return frozenset()
    box_end = min(int.from_bytes(head[:4], "big"), len(head))
    compatible = (head[i:i + 4] for i in range(16, box_end - 3, 4))
    return frozenset((head[8:12], *compatible))


def _as_text(head: bytes) -> str:
    """The head as text for markup sniffing; UTF-16 files announce themselves with a BOM."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return head.decode("utf-16", "ignore")
    return head.decode("utf-8-sig", "ignore")


def _png_declares_no_pixels(data: bytes) -> bool:
    """Pillow cannot identify a PNG whose IHDR says 0x0, so read the IHDR ourselves."""
    return data[12:16] == b"IHDR" and b"\0\0\0\0" in (data[16:20], data[20:24])


@contextmanager
def _opened(data: bytes, max_pixels: int) -> Iterator[tuple[Image.Image, ImageInfo]]:
    """The lazily opened image (header read, no pixels) and its checked ``ImageInfo``."""
    image_format = sniff_format(data[:SNIFF_BYTES])
    if image_format == "PNG" and _png_declares_no_pixels(data):
        raise InputError("invalid_dimensions", "the PNG header declares a zero width or height")
    with _damage_is_corrupt(image_format), \
            Image.open(io.BytesIO(data), formats=[image_format]) as image:
        yield image, _checked_info(image, image_format, max_pixels, data)


@contextmanager
def _damage_is_corrupt(image_format: str) -> Iterator[None]:
    """Decoders raise a dozen exception types on hostile bytes; to us they all mean one thing."""
    try:
        yield
    except (InputError, MemoryError):
        raise
    except Exception as exc:
        message = f"the {image_format} data is damaged or truncated"
        raise InputError("corrupt_image", message) from exc


def _checked_info(image: Image.Image, image_format: str, max_pixels: int,
                  data: bytes) -> ImageInfo:
    width, height = image.size
    if width == 0 or height == 0:
        raise InputError("invalid_dimensions", f"the header declares {width}x{height} pixels")
    _check_pixel_count(width, height, max_pixels)
    if image_format == "JPEG2000":
        _check_codestream(data, image.size, max_pixels)
    orientation = _exif_orientation(image)
    if orientation >= 5:
        width, height = height, width
    frames = _frame_count(image, image_format, data)
    return ImageInfo(image_format, width, height, frames, orientation)


def _check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InputError("too_many_pixels", f"{width}x{height} is {width * height:,} pixels; "
                         f"the limit is {max_pixels:,}")


def _check_codestream(data: bytes, size: tuple[int, int], max_pixels: int) -> None:
    """The codestream's SIZ marker, within the limit, must declare the size the JP2 header
    does, in 1..4 components.

    OpenJPEG allocates what SIZ declares (per component), whatever the JP2 ``ihdr`` box that
    Pillow reports says: a small ``ihdr`` in front of a huge codestream would pass our limit.
    """
    start = 0 if data.startswith(_J2K_START) else _jp2_codestream(data)
    try:
        xsiz, ysiz, xosiz, yosiz, *_, components = struct.unpack_from(">8x8IH", data, start)
    except struct.error:
        raise InputError("corrupt_image", "the JPEG 2000 SIZ marker is truncated") from None
    width, height = xsiz - xosiz, ysiz - yosiz
    _check_pixel_count(width, height, max_pixels)
    if (width, height) != size or not 1 <= components <= 4:
        raise InputError("corrupt_image", f"the JPEG 2000 codestream declares {width}x{height} "
                         f"pixels in {components} components, its header {size[0]}x{size[1]}")


def _jp2_codestream(data: bytes) -> int:
    """Where the first contiguous codestream (``jp2c`` box) of a JP2 file starts."""
    at = 0
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if length == 1 and at + 16 <= len(data):
            length, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif length == 0:  # the last box: it runs to the end of the file
            length = len(data) - at
        if kind == b"jp2c" and data.startswith(_J2K_START, at + header):
            return at + header
        if length < header:
            break
        at += length
    raise InputError("corrupt_image", "the JP2 file holds no codestream")


def _frame_count(image: Image.Image, image_format: str, data: bytes) -> int:
    """Frames or pages, counted up to ``FRAMES_COUNTED`` whatever the file holds.

    Only the first frame is ever used. Pillow's ``n_frames`` walks every page of a TIFF
    (growing faster than the page count: 40,000 pages took ~23 s) and every frame of a GIF,
    so those two are counted here up to the cap; the other formats declare their count.
    """
    if image_format == "TIFF":
        count = 1
        try:
            while count < FRAMES_COUNTED:
                image.seek(count)  # reads the next IFD only; pixels stay undecoded
                count += 1
        except EOFError:
            pass
        image.seek(0)
        return count
    if image_format == "GIF":
        return _gif_frames(data, FRAMES_COUNTED)
    return min(getattr(image, "n_frames", 1), FRAMES_COUNTED)


def _gif_frames(data: bytes, cap: int) -> int:
    """Image descriptors of a GIF up to ``cap``, found by walking its blocks (nothing decoded;
    Pillow's ``seek`` decodes every frame it passes)."""
    def table(flags: int) -> int:  # bytes of the colour table a flags byte announces
        return 3 << ((flags & 7) + 1) if flags & 0x80 else 0

    frames, at = 0, 13 + table(data[10])
    while frames < cap and at < len(data):
        if data[at] == 0x2C:  # image descriptor, its colour table, the LZW code size byte
            at += 10 + table(data[at + 9]) + 1 if at + 9 < len(data) else len(data)
            frames += 1
        elif data[at] == 0x21:  # extension introducer and label
            at += 2
        else:  # trailer, or damage the decoder will report
            break
        while at < len(data) and data[at]:  # data sub-blocks up to the empty one
            at += data[at] + 1
        at += 1
    return max(frames, 1)


def _exif_orientation(image: Image.Image) -> int:
    """EXIF Orientation 1..8; 1 when absent or unreadable (bad metadata must not cost a photo).

    A PNG's eXIf counts only before the pixel data: Pillow's getexif() would decode the whole
    image to look behind it, and OpenCV does not look there either.
    """
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return orientation if orientation in range(1, 9) else 1


def _stored_pixels(image: Image.Image, data: bytes, image_format: str) -> np.ndarray:
    """The first frame as stored (before EXIF orientation), HxWx3 uint8 RGB."""
    stored_shape = (image.height, image.width)
    pixels: np.ndarray | None
    if image_format == "HEIF":
        pixels = np.array(image.convert("RGB"))
    else:
        if image_format == "JPEG":
            _check_jpeg_scan(image)
        first = _first_tiff_page(data) if image_format == "TIFF" else data
        pixels = cv2.imdecode(np.frombuffer(first, np.uint8), _OPENCV_FLAGS)
    if pixels is None or pixels.shape[:2] != stored_shape:
        raise InputError("corrupt_image", f"the {image_format} pixel data cannot be decoded")
    return pixels


def _first_tiff_page(data: bytes) -> bytes | bytearray:
    """The TIFF with its first IFD's next-IFD offset cleared, if it has more pages.

    OpenCV reads the first page as cv2.imread does, but its cost grows faster than the page
    count (160,000 1x1 pages: ~0.3 s, and ~n^1.75); cut off, the rest is never looked at.
    """
    order = "<" if data[:2] == b"II" else ">"
    try:
        if data[2:4] in (b"+\0", b"\0+"):  # BigTIFF: 8-byte offsets and counts, 20-byte entries
            ifd = struct.unpack_from(order + "Q", data, 8)[0]
            at, width = ifd + 8 + 20 * struct.unpack_from(order + "Q", data, ifd)[0], 8
        else:
            ifd = struct.unpack_from(order + "L", data, 4)[0]
            at, width = ifd + 2 + 12 * struct.unpack_from(order + "H", data, ifd)[0], 4
    except struct.error:
        return data  # a damaged header: OpenCV's reader says what it makes of it
    if at + width > len(data) or not any(data[at:at + width]):
        return data
    single = bytearray(data)
    single[at:at + width] = bytes(width)
    return single


def _check_jpeg_scan(image: Image.Image) -> None:
    """Raise on damaged scan data, which OpenCV decodes into garbage with only a warning.

    libjpeg finds the damage while Huffman-decoding, which it does in full at any scale; at
    1/8 scale it skips nearly all IDCT and colour work: about 30 ms for 24 MP, against
    about 100 ms for OpenCV's full decode.
    """
    image.draft(None, (1, 1))
    image.load()

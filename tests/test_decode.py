"""Decoding user photos: every reference file's expected outcome, parity with cv2.imread, limits."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from conftest import BAD_DIR, PHOTOS_DIR, load_manifest
from depthfleet.shared.errors import InputError
from depthfleet.shared.imaging.decode import (
    SNIFF_BYTES,
    SUPPORTED_FORMATS,
    decode_image,
    probe,
    sniff_format,
)
from depthfleet.shared.settings import DEFAULT_MAX_PIXELS
from support import jpeg2000

ENTRIES = [(PHOTOS_DIR, e) for e in load_manifest(PHOTOS_DIR)] + \
          [(BAD_DIR, e) for e in load_manifest(BAD_DIR)]
ACCEPTED = [(folder, e) for folder, e in ENTRIES if e["expected"].startswith("accept")]
BOMBS = [e["file"] for e in load_manifest(BAD_DIR) if e["expected"] == "reject: too_many_pixels"]
HEADER_FAULTS = ("empty_file", "not_an_image", "unsupported_format", "invalid_dimensions",
                 "too_many_pixels")
HEADER_REJECTS = [(folder, e) for folder, e in ENTRIES
                  if e["expected"].removeprefix("reject: ") in HEADER_FAULTS]
THUMB_TOLERANCE = 25
# What OpenCV itself can read (all but HEIF): the official reader is cv2.imread.
CV2_READABLE = [(folder, e) for folder, e in ACCEPTED if e.get("format") != "HEIF"]


def _ids(cases: list[tuple[Path, dict]]) -> list[str]:
    return [entry["file"] for _, entry in cases]


def _outcome(data: bytes) -> str:
    """What the manifests call the outcome: 'accept' or 'reject: <code>'."""
    try:
        decode_image(data, DEFAULT_MAX_PIXELS)
    except InputError as exc:
        return f"reject: {exc.code}"
    return "accept"


def _thumb8_gray(rgb: np.ndarray) -> np.ndarray:
    """The manifests' thumbnail: Pillow 'L' weights, box-filtered to 8x8."""
    gray = Image.fromarray(rgb).convert("L").resize((8, 8), Image.Resampling.BOX)
    return np.asarray(gray, dtype=int)


def _with_exif_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "PNG", exif=exif)
    return out.getvalue()


@pytest.mark.parametrize(("folder", "entry"), ENTRIES, ids=_ids(ENTRIES))
def test_every_reference_file_gets_its_manifest_outcome(folder: Path, entry: dict) -> None:
    expected = entry["expected"].removesuffix(": first frame")
    allowed = {expected, *entry.get("acceptable_alternatives", [])}
    assert _outcome((folder / entry["file"]).read_bytes()) in allowed


@pytest.mark.parametrize(("folder", "entry"), HEADER_REJECTS, ids=_ids(HEADER_REJECTS))
def test_probe_rejects_header_faults_alone(folder: Path, entry: dict) -> None:
    with pytest.raises(InputError) as raised:
        probe((folder / entry["file"]).read_bytes(), DEFAULT_MAX_PIXELS)
    assert f"reject: {raised.value.code}" == entry["expected"]


@pytest.mark.parametrize(("folder", "entry"), ACCEPTED, ids=_ids(ACCEPTED))
def test_accepted_files_decode_upright_with_plausible_content(folder: Path, entry: dict) -> None:
    data = (folder / entry["file"]).read_bytes()
    info = probe(data, DEFAULT_MAX_PIXELS)
    rgb = decode_image(data, DEFAULT_MAX_PIXELS)
    assert (info.width, info.height) == (entry["width"], entry["height"])
    assert info.frames == entry.get("frames", 1)
    assert rgb.shape == (entry["height"], entry["width"], 3) and rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous and rgb.flags.writeable
    if "thumb8_gray" in entry:
        difference = np.abs(_thumb8_gray(rgb) - np.array(entry["thumb8_gray"]))
        assert difference.max() <= THUMB_TOLERANCE


@pytest.mark.parametrize(("folder", "entry"), CV2_READABLE, ids=_ids(CV2_READABLE))
def test_pixels_are_bit_identical_to_the_official_reader(folder: Path, entry: dict) -> None:
    official = cv2.imread(str(folder / entry["file"]), cv2.IMREAD_COLOR)
    assert official is not None
    rgb = decode_image((folder / entry["file"]).read_bytes(), DEFAULT_MAX_PIXELS)
    np.testing.assert_array_equal(rgb, official[:, :, ::-1])


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize(("folder", "entry"), ACCEPTED, ids=_ids(ACCEPTED))
def test_truncated_files_are_corrupt(folder: Path, entry: dict) -> None:
    data = (folder / entry["file"]).read_bytes()
    assert _outcome(data[: len(data) * 6 // 10]) == "reject: corrupt_image"


@pytest.mark.parametrize(("folder", "entry"), ENTRIES, ids=_ids(ENTRIES))
def test_sniffing_finds_the_real_format_whatever_the_name(folder: Path, entry: dict) -> None:
    head = (folder / entry["file"]).read_bytes()[:SNIFF_BYTES]
    if entry.get("format") in SUPPORTED_FORMATS:
        assert sniff_format(head) == entry["format"]
    else:
        with pytest.raises(InputError):
            sniff_format(head)


@pytest.mark.parametrize(("head", "expected"), [
    pytest.param(b"", "empty_file", id="empty"),
    pytest.param(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported_format", id="svg"),
    pytest.param(b"\xef\xbb\xbf \n<?xml version='1.0'?>\n<!-- drawn -->\n<!DOCTYPE svg PUBLIC "
                 b"'-//W3C//DTD SVG 1.1//EN' 'http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd'>"
                 b"\n<svg width='4'>", "unsupported_format", id="svg-after-bom-prolog-doctype"),
    pytest.param("<svg xmlns='http://www.w3.org/2000/svg'>".encode("utf-16"),
                 "unsupported_format", id="svg-utf16"),
    pytest.param(b"%PDF-1.7\n", "unsupported_format", id="pdf"),
    pytest.param(b"%!PS-Adobe-3.0 EPSF-3.0\n", "unsupported_format", id="postscript"),
    pytest.param(b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf", "unsupported_format", id="avif"),
    pytest.param(b"<!DOCTYPE html><html><body><svg></svg></body></html>", "not_an_image",
                 id="html-with-inline-svg"),
    pytest.param(b"<?xml version='1.0'?><rss version='2.0'/>", "not_an_image", id="xml"),
    pytest.param(b"PK\x03\x04\x14\0\0\0", "not_an_image", id="zip"),
    pytest.param(b"\x1f\x8b\x08\0\0\0\0\0", "not_an_image", id="gzip"),
    pytest.param(b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom", "not_an_image", id="mp4"),
    pytest.param(b"BM not really a bitmap", "not_an_image", id="text-starting-with-BM"),
    pytest.param(b"just some text\n", "not_an_image", id="text"),
])
def test_sniffing_rejects_what_is_not_a_photo(head: bytes, expected: str) -> None:
    with pytest.raises(InputError) as raised:
        sniff_format(head)
    assert raised.value.code == expected


@pytest.mark.parametrize(("head", "expected"), [
    pytest.param(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "HEIF", id="heic"),
    pytest.param(b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic", "HEIF", id="heif-generic-major-brand"),
    pytest.param(b"II+\0\x08\0\0\0", "TIFF", id="bigtiff"),
    pytest.param(b"RIFF\0\0\0\0WEBPVP8 ", "WEBP", id="webp"),
])
def test_sniffing_knows_less_common_signatures(head: bytes, expected: str) -> None:
    assert sniff_format(head) == expected


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_the_official_reader(orientation: int) -> None:
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = _with_exif_orientation(stored, orientation)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    official = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    info = probe(data, DEFAULT_MAX_PIXELS)
    rgb = decode_image(data, DEFAULT_MAX_PIXELS)
    assert (info.orientation, info.height, info.width) == (orientation, *upright.shape[:2])
    np.testing.assert_array_equal(rgb, upright)
    np.testing.assert_array_equal(rgb, official)


@pytest.mark.parametrize("params", [
    pytest.param([cv2.IMWRITE_JPEG_PROGRESSIVE, 1], id="progressive"),
    pytest.param([cv2.IMWRITE_JPEG_RST_INTERVAL, 3], id="restart-markers"),
    pytest.param([cv2.IMWRITE_JPEG_OPTIMIZE, 1], id="optimized-huffman"),
    *(pytest.param([cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor], id=f"sampling-{name}")
      for name, factor in [("444", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
                           ("422", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422),
                           ("440", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440),
                           ("411", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411)]),
])
def test_valid_jpeg_variants_pass_the_scan_check(params: list[int]) -> None:
    photo = cv2.imread(str(PHOTOS_DIR / "chelsea.jpg"))
    data = cv2.imencode(".jpg", photo, params)[1]
    official = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)
    np.testing.assert_array_equal(decode_image(data.tobytes(), DEFAULT_MAX_PIXELS), official)


def test_heif_comes_out_upright_once() -> None:
    """libheif applies the rotation itself and pillow-heif resets EXIF: no double rotation."""
    photo = np.asarray(Image.open(PHOTOS_DIR / "chelsea.jpg"))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    out = io.BytesIO()
    Image.fromarray(photo).save(out, "HEIF", exif=exif.tobytes())
    rgb = decode_image(out.getvalue(), DEFAULT_MAX_PIXELS)
    upright = cv2.rotate(photo, cv2.ROTATE_90_CLOCKWISE)
    assert rgb.shape == upright.shape
    assert np.abs(rgb.astype(int) - upright).mean() < 5  # lossy, but nowhere near a wrong turn


def test_16_bit_png_keeps_the_high_byte_like_cv2() -> None:
    samples = np.random.default_rng(16).integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    data = cv2.imencode(".png", samples[:, :, ::-1])[1].tobytes()
    np.testing.assert_array_equal(decode_image(data, DEFAULT_MAX_PIXELS), samples >> 8)


def test_alpha_is_dropped_not_composited() -> None:
    data = (PHOTOS_DIR / "rgba.png").read_bytes()
    rgba = np.asarray(Image.open(io.BytesIO(data)))
    assert (rgba[:, :, 3] == 0).any()
    np.testing.assert_array_equal(decode_image(data, DEFAULT_MAX_PIXELS), rgba[:, :, :3])


def test_pixel_limit_is_ours_and_inclusive() -> None:
    data = (PHOTOS_DIR / "astronaut.png").read_bytes()
    assert probe(data, 512 * 512).width == 512
    with pytest.raises(InputError) as raised:
        decode_image(data, 512 * 512 - 1)
    assert raised.value.code == "too_many_pixels"


def test_pillows_limit_neither_decides_nor_warns() -> None:
    """144 MP is over Pillow's default (89.5 MP, warning only): our setting alone decides."""
    data = (BAD_DIR / "bomb_12000x12000_warn.png").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert probe(data, 200_000_000).width == 12000
        with pytest.raises(InputError) as raised:
            probe(data, DEFAULT_MAX_PIXELS)
    assert raised.value.code == "too_many_pixels"


def test_bombs_are_rejected_without_a_big_allocation(tmp_path: Path) -> None:
    """Peak RSS of a fresh process (VmHWM: ru_maxrss would inherit pytest's own peak)."""
    crafted = []
    for name, data in _JPEG2000_BOMBS.items():
        crafted.append(tmp_path / name)
        crafted[-1].write_bytes(data())
    script = (
        "import sys\n"
        "from depthfleet.shared.errors import InputError\n"
        "from depthfleet.shared.imaging.decode import decode_image\n"
        "def peak(): return next(int(line.split()[1]) * 1024\n"
        "                        for line in open('/proc/self/status') if 'VmHWM' in line)\n"
        "bombs = [open(path, 'rb').read() for path in sys.argv[1:]]\n"
        "before = peak()\n"
        "for data in bombs:\n"
        "    try: decode_image(data, 64_000_000)\n"
        "    except InputError as e: assert e.code == 'too_many_pixels', e.code\n"
        "    else: raise AssertionError('bomb accepted')\n"
        "print(peak() - before)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, *(str(BAD_DIR / f) for f in BOMBS),
                          *map(str, crafted)], capture_output=True, text=True, check=True)
    assert int(run.stdout) < 16 * 2**20  # the smallest bomb would be 268 MB as RGB


def test_decoding_makes_no_full_size_copy_of_its_own() -> None:
    """Python-visible allocations (NumPy, where OpenCV's result lands) peak at one image."""
    data = (PHOTOS_DIR / "large_24mp.jpg").read_bytes()
    tracemalloc.start()
    try:
        rgb = decode_image(data, DEFAULT_MAX_PIXELS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < rgb.nbytes * 1.1


# -- JPEG 2000: JP2 files and bare J2K codestreams, made here by Pillow's OpenJPEG ----------
JPEG2000_SIZE = (451, 301)  # odd sides: no tile or resolution level divides them evenly


def _declaring(data: bytes, ihdr: tuple[int, int] | None = None,
               siz: tuple[int, int] | None = None) -> bytes:
    """``data`` with the JP2 ``ihdr`` box and/or the codestream's SIZ marker declaring
    another width x height (the pixel data stays what it was)."""
    out = bytearray(data)
    if ihdr:
        struct.pack_into(">II", out, out.index(b"ihdr") + 4, ihdr[1], ihdr[0])
    if siz:
        struct.pack_into(">II", out, out.index(b"\xff\x4f\xff\x51") + 8, *siz)
    return bytes(out)


HUGE = (100_000, 100_000)
_JPEG2000_BOMBS = {
    "bomb.jp2": lambda: _declaring(jpeg2000("jp2", JPEG2000_SIZE), HUGE, HUGE),
    "bomb.j2k": lambda: _declaring(jpeg2000("j2k", JPEG2000_SIZE), siz=HUGE),
    # A small JP2 header in front of a huge codestream: OpenJPEG would allocate the latter.
    "lying-ihdr.jp2": lambda: _declaring(jpeg2000("jp2", JPEG2000_SIZE), siz=HUGE),
}


@pytest.mark.parametrize("kind", ["jp2", "j2k"])
def test_jpeg2000_decodes_to_its_size_and_pillows_pixels(kind: str) -> None:
    data = jpeg2000(kind, JPEG2000_SIZE)
    assert data.startswith(b"\0\0\0\x0cjP  " if kind == "jp2" else b"\xff\x4f\xff\x51")
    info = probe(data, DEFAULT_MAX_PIXELS)
    rgb = decode_image(data, DEFAULT_MAX_PIXELS)
    assert (info.format, info.width, info.height, info.frames) == ("JPEG2000", *JPEG2000_SIZE, 1)
    assert rgb.shape == (JPEG2000_SIZE[1], JPEG2000_SIZE[0], 3) and rgb.dtype == np.uint8
    pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int)
    assert np.abs(rgb - pillow).max() <= 2
    photo = np.asarray(Image.open(PHOTOS_DIR / "chelsea.jpg").convert("RGB").resize(JPEG2000_SIZE))
    assert np.abs(rgb.astype(int) - photo).mean() < 6  # lossy, yet the photo and not noise


@pytest.mark.parametrize("name", list(_JPEG2000_BOMBS))
def test_jpeg2000_bombs_are_refused_from_the_header(name: str) -> None:
    with pytest.raises(InputError) as raised:
        probe(_JPEG2000_BOMBS[name](), DEFAULT_MAX_PIXELS)
    assert raised.value.code == "too_many_pixels" and "100000x100000" in raised.value.message


@pytest.mark.parametrize(("kind", "damage"), [
    ("jp2", lambda d: d[:len(d) * 6 // 10]),
    ("j2k", lambda d: d[:len(d) * 6 // 10]),
    ("jp2", lambda d: d[:len(d) - 3]),
    ("j2k", lambda d: d[:300]),
    ("jp2", lambda d: _declaring(d, siz=(JPEG2000_SIZE[0] + 1, JPEG2000_SIZE[1]))),
    ("jp2", lambda d: d.replace(b"jp2c", b"xxxx")),
])
def test_damaged_jpeg2000_is_corrupt(kind: str, damage: Callable[[bytes], bytes]) -> None:
    assert _outcome(damage(jpeg2000(kind, JPEG2000_SIZE))) == "reject: corrupt_image"

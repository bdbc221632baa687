"""Artifacts: bit-exact with the official MiDaS writers, readable by OpenCV and Pillow."""

from __future__ import annotations

import io
import re
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from bench.baseline import official_depth_pixels
from conftest import PARITY_DIR
from depthfleet.shared.imaging.encode import (
    decode_float_tiff,
    decode_pfm,
    encode_depth_png16,
    encode_heatmap_png,
    encode_pfm,
    normalize,
)
from depthfleet.shared.imaging.png import IDAT_CHUNK_BYTES, encode_png
from depthfleet.shared.imaging.tiff import encode_float_tiff

PARITY_NAMES = ("astronaut", "coffee", "chelsea")


# --- the official MiDaS code (utils.write_depth, write_pfm, read_pfm), minus the file I/O ---

def official_pfm(image: np.ndarray, scale: float = 1) -> bytes:
    image = np.flipud(image)
    endian = image.dtype.byteorder
    if endian == "<" or endian == "=" and sys.byteorder == "little":
        scale = -scale
    return b"Pf\n" + b"%d %d\n" % (image.shape[1], image.shape[0]) + b"%f\n" % scale \
        + image.tobytes()


def official_read_pfm(data: bytes) -> np.ndarray:
    file = io.BytesIO(data)
    assert file.readline().rstrip().decode("ascii") == "Pf"
    dim_match = re.match(r"^(\d+)\s(\d+)\s$", file.readline().decode("ascii"))
    assert dim_match
    width, height = map(int, dim_match.groups())
    scale = float(file.readline().decode("ascii").rstrip())
    endian = "<" if scale < 0 else ">"
    pixels = np.frombuffer(file.read(), endian + "f")  # official: np.fromfile(file, ...)
    return np.flipud(np.reshape(pixels, (height, width)))


# --- inputs ---

def parity_depth(name: str) -> np.ndarray:
    """A real prediction at photo size, as the pipeline hands it over."""
    return np.load(PARITY_DIR / f"{name}.npz")["depth"]


def ramp_with_every_level() -> np.ndarray:
    """Reaches every 8-bit level and both ends exactly."""
    return np.linspace(-2.5, 7.0, 4096, dtype=np.float32).reshape(64, 64)


def with_non_finite(depth: np.ndarray) -> np.ndarray:
    damaged = depth.copy()
    damaged[0, :3] = np.nan, np.inf, -np.inf
    return damaged


DEPTHS = {
    **{name: parity_depth(name) for name in PARITY_NAMES},
    "ramp": ramp_with_every_level(),
    "non_finite": with_non_finite(parity_depth("coffee")),
    "constant": np.full((7, 5), 0.75, np.float32),
    "single_pixel": np.ones((1, 1), np.float32),
}
depth_cases = pytest.mark.parametrize("depth", list(DEPTHS.values()), ids=list(DEPTHS))


def read_cv2(data: bytes, flags: int) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def read_pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# --- depth.png ---

@depth_cases
def test_depth_png_holds_the_official_16_bit_pixels(depth: np.ndarray) -> None:
    png = encode_depth_png16(depth)
    official = official_depth_pixels(depth, grayscale=True, bits=2)
    np.testing.assert_array_equal(read_cv2(png, cv2.IMREAD_UNCHANGED), official)
    np.testing.assert_array_equal(read_pillow(png), official)


@depth_cases
def test_depth_png_is_within_one_step_of_the_normalized_depth(depth: np.ndarray) -> None:
    stored = read_cv2(encode_depth_png16(depth), cv2.IMREAD_UNCHANGED) / 65535
    assert np.abs(stored - normalize(depth)).max() <= 1 / 65535 + 1e-7  # + float32 rounding


# --- heatmap.png ---

@depth_cases
def test_heatmap_is_opencv_inferno_in_rgb_order(depth: np.ndarray) -> None:
    png = encode_heatmap_png(depth)
    official_bgr = official_depth_pixels(depth, grayscale=False, bits=2)
    np.testing.assert_array_equal(read_cv2(png, cv2.IMREAD_UNCHANGED), official_bgr)
    np.testing.assert_array_equal(read_pillow(png), official_bgr[:, :, ::-1])


def test_heatmap_colours_near_bright_and_far_dark() -> None:
    rgb = read_pillow(encode_heatmap_png(ramp_with_every_level()))
    assert rgb[0, 0].tolist() == [0, 0, 4] and rgb[-1, -1].tolist() == [252, 255, 164]


# --- depth.pfm ---

@depth_cases
def test_pfm_is_byte_identical_to_write_pfm(depth: np.ndarray) -> None:
    assert encode_pfm(depth) == official_pfm(depth)


@depth_cases
def test_pfm_round_trips_exactly(depth: np.ndarray) -> None:
    pfm = encode_pfm(depth)
    for decoded in (decode_pfm(pfm), read_cv2(pfm, cv2.IMREAD_UNCHANGED), official_read_pfm(pfm)):
        assert decoded.dtype == np.float32
        np.testing.assert_array_equal(decoded, depth)


def test_pfm_header_is_the_official_layout() -> None:
    assert encode_pfm(np.zeros((2, 3), np.float32)).startswith(b"Pf\n3 2\n-1.000000\n")


def test_decode_pfm_reads_big_endian_and_colour() -> None:
    colour = np.arange(24, dtype=">f4").reshape(2, 4, 3)
    data = b"PF\n4 2\n1.0\n" + colour[::-1].tobytes()
    np.testing.assert_array_equal(decode_pfm(data), colour)


@pytest.mark.parametrize("data", [b"", b"P6\n4 2\n255\n", b"Pf\n4 2\n-1.0\n" + b"\0" * 31])
def test_decode_pfm_rejects_what_is_not_a_whole_pfm(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_pfm(data)


# --- normalisation edge cases ---

def test_constant_depth_gives_zeros() -> None:
    depth = DEPTHS["constant"]
    assert not normalize(depth).any()
    assert not read_pillow(encode_depth_png16(depth)).any()


def test_non_finite_values_count_as_zero() -> None:
    depth = np.array([[np.nan, 1.0], [np.inf, 3.0]], np.float32)
    np.testing.assert_array_equal(normalize(depth), np.array([[0, 1 / 3], [0, 1]], np.float32))


# --- the PNG writer itself ---

@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (33, 17), (33, 17, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_writer_round_trips_through_opencv_and_pillow(shape: tuple, dtype: type) -> None:
    pixels = np.random.default_rng(len(shape)).integers(0, np.iinfo(dtype).max + 1, shape,
                                                        dtype=dtype)
    png = encode_png(pixels)
    from_cv2 = read_cv2(png, cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(from_cv2 if pixels.ndim == 2 else from_cv2[:, :, ::-1], pixels)
    if dtype == np.uint8 or pixels.ndim == 2:  # Pillow reduces 48-bit RGB to 8 bits
        np.testing.assert_array_equal(read_pillow(png), pixels)


def test_png_writer_splits_large_streams_into_several_idat_chunks() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    png = encode_png(noise)
    assert png.count(b"IDAT") > len(png) // IDAT_CHUNK_BYTES
    np.testing.assert_array_equal(read_pillow(png), noise)


@pytest.mark.parametrize("pixels", [np.zeros((2, 2), np.float32), np.zeros((2, 2, 4), np.uint8)],
                         ids=["float", "rgba"])
def test_png_writer_refuses_what_it_cannot_write(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_png(pixels)




# --- the float TIFF writer (depth_raw) ---

@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (192, 256), (200, 37)])
def test_float_tiff_round_trips_exactly_through_opencv_and_pillow(shape: tuple) -> None:
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    smooth = np.cumsum(rng.normal(0, 0.01, shape), axis=1).astype(np.float32) + 2
    tiff = encode_float_tiff(smooth)
    np.testing.assert_array_equal(decode_float_tiff(tiff), smooth)
    pillow = Image.open(io.BytesIO(tiff))
    assert pillow.mode == "F" and pillow.info.get("compression") == "tiff_adobe_deflate"
    np.testing.assert_array_equal(np.asarray(pillow), smooth)


def test_float_tiff_keeps_special_values_and_signed_zero() -> None:
    values = np.float32([[np.inf, -np.inf, np.nan, -0.0, 1e-45, np.finfo(np.float32).max]])
    decoded = decode_float_tiff(encode_float_tiff(values))
    assert decoded.tobytes() == values.tobytes()


def test_float_tiff_predictor_makes_smooth_maps_smaller_than_plain_deflate() -> None:
    """The floating-point predictor is what pays for ISA-L's fast level: without it a smooth
    map deflates no better than OpenCV's zlib output; with it, clearly better."""
    yy, xx = np.mgrid[0:192, 0:256].astype(np.float32)
    smooth = np.sin(xx / 40) + np.cos(yy / 30) + 3
    ok, plain = cv2.imencode(".tiff", smooth, [cv2.IMWRITE_TIFF_COMPRESSION,
                                               cv2.IMWRITE_TIFF_COMPRESSION_ADOBE_DEFLATE])
    assert ok and len(encode_float_tiff(smooth)) < 0.8 * len(plain)


@pytest.mark.parametrize("values", [np.zeros((0, 3), np.float32), np.zeros((2, 2, 1), np.float32)],
                         ids=["empty", "3d"])
def test_float_tiff_writer_refuses_what_it_cannot_write(values: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_float_tiff(values)

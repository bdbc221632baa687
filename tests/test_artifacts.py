"""The artifact catalog: compact artifacts are small and lossless where they must be, and every
full-size artifact rendered from depth_raw equals the one drawn from the network output."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import PARITY_DIR
from depthfleet.shared import layout
from depthfleet.shared.artifacts import (
    ARTIFACTS,
    BY_FILENAME,
    COMPACT,
    FULL_SIZE,
    PHOTO_SIDE,
    PREVIEW_SIDE,
    check_names,
    make_compact,
    raw_depth,
    render_full_size,
    result_meta,
    stored_outputs,
    thumbnail_pixels,
)
from depthfleet.shared.depth import RawDepth
from depthfleet.shared.imaging.encode import (
    decode_pfm,
    encode_depth_png16,
    encode_heatmap_png,
    encode_pfm,
)

PARITY_NAMES = ("astronaut", "coffee", "chelsea")


def parity_raw(name: str) -> tuple[RawDepth, np.ndarray]:
    """The network output of a parity photo, its photo size, and the official full-size map."""
    arrays = np.load(PARITY_DIR / f"{name}.npz")
    depth = arrays["depth"]
    return RawDepth(arrays["net_output"], depth.shape[1], depth.shape[0]), depth


def test_catalog_names_filenames_and_kinds() -> None:
    assert {(a.name, a.filename, a.content_type, a.full_size) for a in ARTIFACTS.values()} == {
        ("depth_png", "depth.png", "image/png", True),
        ("depth_pfm", "depth.pfm", "image/x-portable-floatmap", True),
        ("heatmap_png", "heatmap.png", "image/png", True),
        ("depth_raw", "depth_raw.tiff", "image/tiff", False),
        ("heatmap_preview", "heatmap_preview.jpg", "image/jpeg", False),
        ("thumbnail", "thumbnail.jpg", "image/jpeg", False),
        ("photo", "photo.jpg", "image/jpeg", False),
    }
    assert FULL_SIZE == ("depth_png", "depth_pfm", "heatmap_png")
    assert COMPACT == ("depth_raw", "heatmap_preview", "thumbnail", "photo")
    assert BY_FILENAME["depth_raw.tiff"] == "depth_raw"


def test_stored_outputs_always_hold_the_compact_set() -> None:
    assert stored_outputs([]) == COMPACT
    assert stored_outputs(["heatmap_png", "depth_png", "depth_png"]) == (
        "depth_png", "heatmap_png", *COMPACT)
    with pytest.raises(ValueError, match="depth_jpg"):
        check_names(["depth_jpg"])


@pytest.mark.parametrize("name", PARITY_NAMES)
def test_full_size_renders_are_the_official_maps_encoded(name: str) -> None:
    raw, official = parity_raw(name)
    ours = raw.at()
    assert ours.shape == official.shape
    assert np.abs(ours - official).max() <= 2e-6 * (official.max() - official.min())
    rendered = render_full_size(raw, FULL_SIZE)
    assert rendered == {"depth_png": encode_depth_png16(ours), "depth_pfm": encode_pfm(ours),
                        "heatmap_png": encode_heatmap_png(ours)}
    assert render_full_size(raw, ["depth_raw", "thumbnail"]) == {}


@pytest.mark.parametrize("name", PARITY_NAMES)
def test_depth_raw_round_trips_bit_for_bit_and_common_readers_read_it(name: str) -> None:
    raw, _ = parity_raw(name)
    data = make_compact(raw, np.zeros((raw.height, raw.width, 3), np.uint8), ["depth_raw"])["depth_raw"]
    assert len(data) < raw.net.nbytes  # deflated
    back = raw_depth(data, raw.width, raw.height)
    assert back.net.dtype == np.float32 and np.array_equal(back.net, raw.net)
    assert render_full_size(back, ["depth_pfm"]) == render_full_size(raw, ["depth_pfm"])
    with Image.open(io.BytesIO(data)) as image:  # Pillow, as tools built on it read it
        assert image.mode == "F" and np.array_equal(np.asarray(image), raw.net)
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), raw.net)


@pytest.mark.parametrize("shape", [(3024, 4032), (4032, 3024), (427, 640), (40, 4000), (3, 4000),
                                   (1, 1), (512, 512), (513, 100)])
def test_previews_fit_in_the_preview_side(shape: tuple[int, int]) -> None:
    height, width = shape
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    raw = RawDepth(rng.random((32, 32), dtype=np.float32), width, height)
    made = make_compact(raw, rgb, COMPACT)
    assert set(made) == set(COMPACT)
    for name, side in (("heatmap_preview", PREVIEW_SIDE), ("thumbnail", PREVIEW_SIDE),
                       ("photo", PHOTO_SIDE)):
        with Image.open(io.BytesIO(made[name])) as image:
            assert image.format == "JPEG"
            assert max(image.size) <= side
            assert max(image.size) >= min(max(shape), side) // 2  # not needlessly small
            ratio = image.size[0] / image.size[1]
            assert abs(ratio - width / height) <= 0.05 * width / height or min(image.size) <= 2


def test_thumbnail_averages_whole_blocks() -> None:
    rgb = np.zeros((3024, 4032, 3), np.uint8)
    rgb[:, ::2] = 200  # alternate columns: every 8x8 block averages to 100
    thumb = thumbnail_pixels(rgb)
    assert thumb.shape == (378, 504, 3)
    assert np.all(thumb == 100)


def test_meta_describes_how_to_rebuild_the_maps() -> None:
    raw, official = parity_raw("chelsea")
    meta = result_meta(raw, 0.5, 2.0, {"depth_raw": "k"})
    assert meta["width"] == official.shape[1] and meta["height"] == official.shape[0]
    assert meta["network_size"] == [raw.net.shape[1], raw.net.shape[0]]
    assert {"raw_format", "upsampling", "depth_min", "depth_max", "artifacts"} <= set(meta)


def test_result_variants_never_mix_stored_sets() -> None:
    sha = "ab" * 32
    names = {layout.variant(sha, None), layout.variant(sha, 640), layout.variant(sha, None, ["depth_png"]),
             layout.variant(sha, None, ["depth_png", "heatmap_png"])}
    assert len(names) == 4
    assert all(not name.endswith("-full") for name in names)  # never the pre-compact folders
    key = layout.render_key("t/a/results/ab/x/v/depth_raw.tiff", (3024, 4032), "depth.png")
    assert key == "cache/t/a/results/ab/x/v/4032x3024/depth.png"


def test_render_at_max_side_is_the_map_upsampled_to_that_size() -> None:
    raw, _ = parity_raw("astronaut")
    small = decode_pfm(render_full_size(raw, ["depth_pfm"], 100)["depth_pfm"])
    assert small.shape == raw.size(100) == (100, 100)
    assert np.array_equal(small, raw.at(100))

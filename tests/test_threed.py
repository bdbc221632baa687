"""Issue #16: ``parallax.mp4`` and ``mesh.glb``, on constructed depth maps whose right answer is
known, read back with independent readers, and through the real fleet.

Constructed depth (the test weights give noise-like depth): a plane tilted left to right
(every pixel shifts in proportion to its disparity), a near square on a far background (the
square moves more, covers the background, and the hole it leaves is filled with background),
and a flat map (nothing moves). The MP4 is decoded by OpenCV's own FFmpeg (frames, size, fps)
and inspected by PyAV (pixel format) and by its boxes (the index before the data); the GLB is
loaded by trimesh and read by pygltflib (vertex count, texture, bounds).
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import requests
import trimesh
from pygltflib import GLTF2

from conftest import PHOTOS_DIR
from depthfleet.client import Client
from depthfleet.shared.artifacts import (ARTIFACTS, COMPACT, FROM_PHOTO, drawing_options,
                                         stored_names, stored_outputs)
from depthfleet.shared.depth import relative_disparity
from depthfleet.shared.errors import InputError
from depthfleet.shared.mesh import MeshOptions, grid_shape, render_mesh
from depthfleet.shared import parallax
from depthfleet.shared.parallax import (FOCUS, FPS, SECONDS, ParallaxOptions, Warper,
                                        camera_path, fill_holes, frames, render_parallax,
                                        video_size)
from depthfleet.api.ingest import parse_options
from support import poll, running, s3_system, system_env

RED, BLUE = (220, 30, 30), (20, 40, 200)


# -- constructed scenes ----------------------------------------------------------------------
def ramp_photo(height: int, width: int) -> np.ndarray:
    """R = the column, G = the row: a sampled pixel says where in the photo it came from."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols, rows, np.full_like(cols, 128)], axis=-1).astype(np.uint8)


def square_scene(height: int = 120, width: int = 200, box: tuple[int, int, int, int] = (40, 80, 60, 100)
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A red square (rows, cols of ``box``) near, on a far blue background whose green is its
    column (times 200 / width: so the background's own motion can be read off)."""
    top, bottom, left, right = box
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = BLUE[0], BLUE[2]
    rgb[..., 1] = (np.arange(width) * 200 // width).astype(np.uint8)[None, :]
    rgb[top:bottom, left:right] = RED
    depth = np.zeros((height, width), np.float32)
    depth[top:bottom, left:right] = 10.0  # relative inverse depth: larger is nearer
    return rgb, depth


def red_mask(frame: np.ndarray) -> np.ndarray:
    return (frame[..., 0] > 150) & (frame[..., 2] < 100)


# -- the warp on constructed depth -----------------------------------------------------------
def test_a_tilted_plane_shifts_each_pixel_in_proportion_to_its_disparity() -> None:
    height, width, shift = 60, 240, 20.0
    depth = np.tile(np.arange(width, dtype=np.float32), (height, 1))  # far left, near right
    t = relative_disparity(depth)
    frame = Warper(ramp_photo(height, width), t, (height, width), reach=22).frame((shift, 0.0))
    # where each output column's colour came from (R is the source column), away from the sides
    cols = np.arange(15, width - 15)
    source = frame[:, cols, 0].astype(np.float32).mean(axis=0)
    moved = cols - source
    expected = shift * (source / (width - 1) - FOCUS)  # t of the source column is x / (W-1)
    assert np.abs(moved - expected).max() <= 0.8, np.abs(moved - expected).max()
    # proportional, not uniform: +8 px near the right side, -8 px near the left
    assert moved[-1] > 7.5 and moved[0] < -7.5
    assert np.array_equal(frame[..., 1], ramp_photo(height, width)[..., 1])  # no vertical motion


def test_a_near_square_moves_more_covers_the_background_and_its_hole_is_background() -> None:
    rgb, depth = square_scene()
    shift = 20.0  # square (t=1) moves +10 px, background (t=0) -10 px
    frame = Warper(rgb, relative_disparity(depth), rgb.shape[:2], reach=22).frame((shift, 0.0))
    red = red_mask(frame)
    ys, xs = np.nonzero(red)
    assert (ys.min(), ys.max()) == (40, 79)
    assert abs(xs.mean() - (79.5 + 10)) <= 0.5  # the square's centre moved +10
    # near covers far: the background moving left over the square's new place stays under it
    assert red[40:80, 71:109].all()
    # the background moved the other way: its green (its source column) reads x + 10
    background_rows = frame[5:35, 20:180, 1].astype(int)
    assert np.abs(background_rows - (np.arange(20, 180) + 10)).max() <= 1
    # the disocclusion (output columns 50..69, where nothing lands) holds background, not red
    hole = frame[41:79, 51:69].astype(int)
    assert not red_mask(frame[41:79, 51:69]).any()
    assert np.abs(hole[..., 0] - BLUE[0]).max() <= 12 and np.abs(hole[..., 2] - BLUE[2]).max() <= 12
    # ... continued from the background just behind the square's trailing edge (columns < 60)
    assert hole[..., 1].max() < 60


def test_far_over_near_or_ignoring_depth_would_be_caught() -> None:
    """The same scene with the square far and the background near: now the square is the one
    covered, so the checks above really depend on the z-order and on depth."""
    rgb, depth = square_scene()
    frame = Warper(rgb, relative_disparity(10.0 - depth), rgb.shape[:2], reach=22).frame((20.0, 0))
    red = red_mask(frame)
    # the far square went -10 (to columns 50..89), the near background +10 over its left part
    assert not red[40:80, 51:69].any()
    assert red[40:80, 71:89].all()
    # the hole the background left (90..109) shows what is behind it: the square, continued
    assert red[41:79, 91:109].all()


@pytest.mark.parametrize("shift", [(9.0, 0.0), (0.0, 9.0), (7.0, -5.0)])
def test_sparse_and_dense_hole_filling_agree_with_a_plain_search(monkeypatch, shift) -> None:
    """Holes walked from (few) or filled run by run (many) get what a plain pixel-by-pixel
    search gives: the largest of the closest filled pixels on each side within reach."""
    rng = np.random.default_rng(5)
    depth = cv2.resize(rng.random((6, 8)).astype(np.float32), (64, 48))  # stretches: holes
    z = Warper(np.zeros((48, 64, 3), np.uint8), relative_disparity(depth), (48, 64)).splat(shift)
    holes = np.argwhere(z < 0)
    assert 0 < len(holes) and (z < 0).mean() > parallax.DENSE_HOLES  # dense at first
    reach, rows, columns = 4, shift[0] != 0, shift[1] != 0
    expected = z.copy()
    for y, x in holes:
        found = [-1.0]
        for dy, dx, along in ((0, 1, rows), (0, -1, rows), (1, 0, columns), (-1, 0, columns)):
            for k in range(1, reach + 1) if along else ():
                yy, xx = y + k * dy, x + k * dx
                if not (0 <= yy < 48 and 0 <= xx < 64):
                    break
                if z[yy, xx] >= 0:
                    found.append(z[yy, xx])
                    break
        expected[y, x] = max(found) if max(found) >= 0 else FOCUS
    dense = z.copy()
    fill_holes(dense, reach, columns, rows)
    monkeypatch.setattr(parallax, "DENSE_HOLES", 1.0)  # everything sparse: walked
    sparse = z.copy()
    fill_holes(sparse, reach, columns, rows)
    assert np.array_equal(dense, expected) and np.array_equal(sparse, expected)


def test_a_flat_map_does_not_move() -> None:
    rgb = np.random.default_rng(7).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    loop = list(frames(rgb, np.full((90, 160), 3.5, np.float32), ParallaxOptions(motion=0.1)))
    assert len(loop) == FPS * SECONDS
    assert all(np.array_equal(frame, loop[0]) for frame in loop)


def test_camera_paths_are_seamless_loops() -> None:
    for path in ("circle", "horizontal", "vertical"):
        positions = camera_path(path, 72)
        assert np.abs(positions).max() <= 1 + 1e-9
        step = np.linalg.norm(np.diff(positions, axis=0), axis=1).max()
        seam = np.linalg.norm(positions[0] - positions[-1])
        assert seam <= step + 1e-9, path  # the last frame leads back to the first


# -- the MP4 file ----------------------------------------------------------------------------
def top_level_boxes(data: bytes) -> list[str]:
    """The MP4's top-level box types in file order (ISO BMFF: 32-bit size, 4-char type)."""
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
        boxes.append(kind.decode("latin-1"))
        offset += size if size else len(data)
    return boxes


def decoded(data: bytes, folder: Path) -> tuple[list[np.ndarray], float]:
    """Every frame (RGB) and the frame rate, as OpenCV's own FFmpeg reads the file."""
    path = folder / "video.mp4"
    path.write_bytes(data)
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    fps = capture.get(cv2.CAP_PROP_FPS)
    out = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        out.append(bgr[..., ::-1])
    capture.release()
    return out, fps


def check_mp4(data: bytes, size: tuple[int, int], folder: Path) -> list[np.ndarray]:
    """The issue's requirements of the file; returns its frames."""
    boxes = top_level_boxes(data)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # faststart
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
    loop, fps = decoded(data, folder)
    assert len(loop) == FPS * SECONDS >= 24
    assert abs(fps - FPS) < 0.01
    assert {frame.shape for frame in loop} == {(*size, 3)}
    return loop


def test_parallax_mp4_of_a_near_square_plays_everywhere_and_the_square_moves(tmp_path) -> None:
    rgb, depth = square_scene(240, 320, (80, 160, 120, 200))
    data = render_parallax(rgb, depth, ParallaxOptions(motion=0.1, path="horizontal"))
    loop = check_mp4(data, (240, 320), tmp_path)
    centres = np.array([np.nonzero(red_mask(frame))[1].mean() for frame in loop])
    # travel 32 px: the square (t=1) swings +-16 px about the middle, in step with the path
    swing = camera_path("horizontal", len(loop))[:, 0]
    assert np.corrcoef(centres, swing)[0, 1] > 0.99
    assert 14 <= (centres.max() - centres.min()) / 2 <= 18
    # the background (green = its column) swings the other way, as much
    background = np.array([frame[10:40, 140:180, 1].astype(float).mean() for frame in loop])
    assert np.corrcoef(background, swing)[0, 1] > 0.95
    # seamless: the last frame is as close to the first as any two neighbours are
    steps = [np.abs(a.astype(int) - b).mean() for a, b in zip(loop, loop[1:])]
    assert np.abs(loop[-1].astype(int) - loop[0]).mean() <= max(steps) * 1.5


def test_parallax_mp4_of_a_flat_map_is_still_and_capped_in_size(tmp_path) -> None:
    rgb = cv2.resize(cv2.imread(str(PHOTOS_DIR / "coffee.jpg"))[..., ::-1], (1600, 1067))
    assert video_size(1067, 1600, None) == (854, 1280)
    data = render_parallax(rgb, np.ones((1067, 1600), np.float32), ParallaxOptions())
    loop = check_mp4(data, (854, 1280), tmp_path)
    assert max(np.abs(frame.astype(int) - loop[0]).mean() for frame in loop) < 1.0
    small = render_parallax(rgb, np.ones((10, 10), np.float32), ParallaxOptions(), max_side=321)
    check_mp4(small, video_size(1067, 1600, 321), tmp_path)
    assert video_size(1067, 1600, 321) == (214, 320)  # even sides for yuv420p


def test_parallax_of_a_one_pixel_photo_is_a_video_all_the_same(tmp_path) -> None:
    data = render_parallax(np.full((1, 1, 3), 200, np.uint8), np.ones((1, 1), np.float32),
                           ParallaxOptions())
    check_mp4(data, (2, 2), tmp_path)


# -- the GLB file ----------------------------------------------------------------------------
def loaded(data: bytes) -> trimesh.Trimesh:
    mesh = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh", process=False)
    assert isinstance(mesh, trimesh.Trimesh)
    return mesh


def test_mesh_glb_is_a_textured_relief_within_its_vertex_budget() -> None:
    rgb, depth = square_scene(300, 400, (100, 200, 150, 250))
    data = render_mesh(rgb, depth, MeshOptions(vertices=5000, relief=0.3))
    assert data[:4] == b"glTF" and struct.unpack("<I", data[4:8])[0] == 2
    mesh = loaded(data)
    rows, cols = grid_shape(300, 400, 5000)
    assert len(mesh.vertices) == rows * cols <= 5000 and rows * cols > 0.98 * 5000
    assert len(mesh.faces) == 2 * (rows - 1) * (cols - 1)
    lo, hi = mesh.bounds
    assert np.allclose(hi[:2] - lo[:2], [1.0, 0.75], atol=1e-6)  # the photo's aspect, longer 1
    assert np.isclose(lo[2], 0.0, atol=1e-6) and np.isclose(hi[2], 0.3, atol=1e-6)
    # the square stands out by the relief, toward the viewer (+Z), the background flat at 0
    x, y, z = mesh.vertices.T
    inside = (np.abs(x) < 0.1) & (np.abs(y) < 0.1)
    outside = (np.abs(x) > 0.3) | (np.abs(y) > 0.3)
    assert np.allclose(z[inside], 0.3, atol=1e-5) and np.allclose(z[outside], 0.0, atol=1e-5)
    assert (mesh.face_normals[:, 2] > 0).mean() > 0.9  # triangles face the viewer
    texture = mesh.visual.material.baseColorTexture
    assert texture.size == (400, 300)
    # the texture is the photo: the red square where its UVs say
    pixels = np.asarray(texture.convert("RGB"))
    assert np.abs(pixels[150, 200].astype(int) - RED).max() <= 10
    uv = mesh.visual.uv[inside]
    assert np.all((uv[:, 0] > 0.35) & (uv[:, 0] < 0.65))


def test_mesh_glb_is_valid_gltf_to_an_independent_reader() -> None:
    rgb = cv2.imread(str(PHOTOS_DIR / "chelsea.jpg"))[..., ::-1]
    depth = np.random.default_rng(3).random((40, 60)).astype(np.float32)
    gltf = GLTF2.load_from_bytes(render_mesh(rgb, depth, MeshOptions()))
    assert gltf.asset.version == "2.0"
    primitive = gltf.meshes[0].primitives[0]
    positions = gltf.accessors[primitive.attributes.POSITION]
    assert positions.count == np.prod(grid_shape(*rgb.shape[:2], 65_536)) <= 65_536
    assert positions.count > 0.99 * 65_536
    assert positions.max[2] - positions.min[2] == pytest.approx(0.2, abs=1e-6)
    image = gltf.images[0]
    assert image.mimeType == "image/jpeg"
    view = gltf.bufferViews[image.bufferView]
    blob = gltf.binary_blob()
    jpeg = cv2.imdecode(np.frombuffer(blob[view.byteOffset:view.byteOffset + view.byteLength],
                                      np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape[:2] == rgb.shape[:2]  # under the 2048 texture cap: the photo's own size
    assert "KHR_materials_unlit" in gltf.materials[0].extensions
    assert gltf.materials[0].pbrMetallicRoughness.baseColorTexture.index == 0
    indices = gltf.accessors[primitive.indices]
    assert indices.count % 3 == 0  # triangles; uint16 up to 65,535 vertices (0xFFFF reserved)
    assert indices.componentType == (5123 if positions.count <= 0xFFFF else 5125)


def test_mesh_of_a_flat_map_and_of_a_tiny_photo() -> None:
    flat = loaded(render_mesh(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.float32),
                              MeshOptions(vertices=16)))
    assert len(flat.vertices) == 16 and np.ptp(flat.vertices[:, 2]) == 0
    tiny = loaded(render_mesh(np.zeros((1, 1, 3), np.uint8), np.ones((1, 1), np.float32),
                              MeshOptions()))
    assert len(tiny.vertices) == 4


def test_the_texture_is_capped() -> None:
    rgb = np.zeros((3000, 4000, 3), np.uint8)
    gltf = GLTF2.load_from_bytes(render_mesh(rgb, np.ones((30, 40), np.float32), MeshOptions(),
                                             max_side=1000))
    view = gltf.bufferViews[gltf.images[0].bufferView]
    jpeg = cv2.imdecode(np.frombuffer(gltf.binary_blob()[view.byteOffset:][:view.byteLength],
                                      np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape[:2] == (750, 1000)


# -- options ---------------------------------------------------------------------------------
def test_options_are_checked_and_filled_in() -> None:
    assert parse_options({"outputs": ["parallax_mp4", "mesh_glb"]}) == {
        "outputs": [*COMPACT, "parallax_mp4", "mesh_glb"],
        "max_side": None, "parallax": {"motion": 0.03, "path": "circle"},
        "mesh": {"vertices": 65_536, "relief": 0.2}}
    assert parse_options('{"outputs": ["parallax_mp4"], "parallax": {"path": "vertical"}}')[
        "parallax"] == {"motion": 0.03, "path": "vertical"}
    assert parse_options({"outputs": ["depth_png"]}) == {
        "outputs": ["depth_png", *COMPACT], "max_side": None}  # no 3D: as before


@pytest.mark.parametrize("options, words", [
    ({"outputs": ["parallax_mp4"], "parallax": {"motion": 0.5}}, "parallax.motion"),
    ({"outputs": ["parallax_mp4"], "parallax": {"motion": True}}, "parallax.motion"),
    ({"outputs": ["parallax_mp4"], "parallax": {"path": "spiral"}}, "parallax.path"),
    ({"outputs": ["parallax_mp4"], "parallax": {"speed": 1}}, "options.parallax"),
    ({"outputs": ["parallax_mp4"], "parallax": [0.1]}, "options.parallax"),
    ({"outputs": ["mesh_glb"], "mesh": {"vertices": 8}}, "mesh.vertices"),
    ({"outputs": ["mesh_glb"], "mesh": {"vertices": 1000.5}}, "mesh.vertices"),
    ({"outputs": ["mesh_glb"], "mesh": {"relief": -0.1}}, "mesh.relief"),
    ({"outputs": ["depth_png"], "mesh": {"relief": 0.1}}, "mesh_glb"),
    ({"parallax": {}}, "parallax_mp4"),
])
def test_bad_options_are_400_invalid_options(options: dict[str, Any], words: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_options(options)
    assert (caught.value.code, caught.value.status) == ("invalid_options", 400)
    assert words in caught.value.message


def test_drawn_artifacts_are_stored_in_folders_named_by_their_options() -> None:
    assert FROM_PHOTO == ("parallax_mp4", "mesh_glb")
    assert {ARTIFACTS[n].filename for n in FROM_PHOTO} == {"parallax.mp4", "mesh.glb"}
    outputs = stored_outputs(["mesh_glb", "parallax_mp4", "depth_png"])
    assert outputs == ("depth_png", *COMPACT, "parallax_mp4", "mesh_glb")
    default = stored_names(outputs, {})
    assert default == ["depth_png", "parallax_mp4-circle0.03", "mesh_glb-v65536r0.2"]
    other = stored_names(outputs, drawing_options(
        {"parallax": {"motion": 0.05}, "mesh": {"vertices": 1000}}, outputs))
    assert other == ["depth_png", "parallax_mp4-circle0.05", "mesh_glb-v1000r0.2"]


# -- the CLI and the fleet -------------------------------------------------------------------
def test_predict_writes_both_and_checks_its_flags(tmp_path, checkpoint_path) -> None:
    env = system_env("", "", None, checkpoint_path, tmp_path / "cache")
    photo = tmp_path / "in" / "coffee.jpg"
    photo.parent.mkdir()
    photo.write_bytes((PHOTOS_DIR / "coffee.jpg").read_bytes())
    command = [sys.executable, "-m", "depthfleet.cli", "predict", str(photo.parent), "--out",
               str(tmp_path / "out"), "--outputs", "parallax_mp4,mesh_glb"]
    bad = subprocess.run([*command, "--parallax-motion", "0.5"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "parallax.motion" in bad.stderr
    done = subprocess.run([*command, "--mesh-vertices", "2000", "--parallax-path", "vertical"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    height, width = cv2.imread(str(photo)).shape[:2]
    check_mp4((tmp_path / "out" / "coffee.parallax.mp4").read_bytes(),
              video_size(height, width, None), tmp_path)
    assert len(loaded((tmp_path / "out" / "coffee.mesh.glb").read_bytes()).vertices) <= 2000


@pytest.mark.integration
@pytest.mark.browser
def test_a_job_gives_each_photo_a_video_and_a_mesh_through_the_api_and_the_page(
        tmp_path, redis_db_url, s3_server, checkpoint_path) -> None:
    """The real fleet (API, two worker processes, Redis, S3 over HTTP), keyless on loopback
    as the web page uses it; then the page offers both files for download."""
    from test_web import download
    from webpage import card, chromium, tab

    system = s3_system(tmp_path, redis_db_url, s3_server, checkpoint_path, "depthfleet-threed")
    photos = [PHOTOS_DIR / "chelsea.jpg", PHOTOS_DIR / "grace_hopper.jpg"]
    outputs = ["depth_png", "parallax_mp4", "mesh_glb"]
    with running(system), Client(system.api_url, timeout=120) as client:
        bad = requests.post(f"{system.api_url}/v1/jobs", timeout=30,
                            files=[("file", ("chelsea.jpg", photos[0].read_bytes()))],
                            data={"options": '{"outputs": ["mesh_glb"], "mesh": {"vertices": 3}}'})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_options"
        assert "mesh.vertices" in bad.json()["error"]["message"]
        job = client.submit_files(photos, {"outputs": outputs})
        final = poll(lambda: client.status(job["id"]), lambda s: s["pending"] == 0, 300)
        assert final["status"] == "succeeded", final
        assert final["options"]["parallax"] == {"motion": 0.03, "path": "circle"}
        videos = {}
        for item in client.iter_items(job["id"]):
            assert {"parallax_mp4", "mesh_glb", "depth_png"} <= set(item["artifacts"])
            videos[item["name"]] = client.download(item["artifacts"]["parallax_mp4"])  # via S3
            check_mp4(videos[item["name"]], video_size(item["height"], item["width"], None),
                      tmp_path)
            streamed = requests.get(item["artifacts"]["mesh_glb"], params={"inline": "1"},
                                    timeout=60)
            assert streamed.headers["Content-Type"] == "model/gltf-binary"
            mesh = loaded(streamed.content)
            assert len(mesh.vertices) <= 65_536
            assert mesh.visual.material.baseColorTexture.size == (item["width"], item["height"])

        with chromium() as browser, tab(browser) as page:
            page.goto(f"{system.api_url}/#job={job['id']}")
            chelsea = card(page, "chelsea.jpg")
            filename, data = download(page, chelsea.get_by_role("link", name="Parallax video (MP4)"))
            assert (filename, data) == ("chelsea.parallax.mp4", videos["chelsea.jpg"])
            filename, data = download(page, chelsea.get_by_role(
                "link", name="3D relief mesh (glTF .glb)"))
            assert filename == "chelsea.mesh.glb" and len(loaded(data).vertices) <= 65_536

        again = client.submit_files(photos[:1], {"outputs": outputs, "parallax": {"motion": 0.06}})
        final = poll(lambda: client.status(again["id"]), lambda s: s["pending"] == 0, 300)
        assert final["status"] == "succeeded" and final["reused"] == 0  # other motion: drawn anew

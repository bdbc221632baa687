"""Issue #13's acceptance through the fleet: compact results, full-size artifacts on read.

One real system with default options (API process, two Celery worker processes, the
machine's Redis, moto S3 over HTTP) shows that:

1. the bucket holds little per photo: every object under a photo's result prefix adds up to
   at most 1 MB for 12 MP camera photos, 300 KB for 640x427-class ones, none full-size;
2. full-size artifacts rendered on read, at the photo's size and at ``?max_side``, match
   ``depthfleet predict``'s for every reference and parity photo, redirected or streamed;
3. ``options.outputs`` still stores full-size files, in a result folder of their own;
4. item records written before the change (no depth_raw) are served as they were stored;
5. rendering on read checks its argument, renders a burst of identical reads once, and
   serves nobody but the item's tenant.

About 80 s on 2 cores, most of it the workers and ``predict`` computing the 24 reference
photos and nine camera-class ones, and the 24 MP photo's renders (its depth.pfm is 96 MB).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pytest
import requests

from bench.workloads import BIG_QUALITY, _phone_sized, make_big, tagged
from conftest import PARITY_DIR, PHOTOS_DIR, MotoServer, load_manifest
from depthfleet.client import Client
from depthfleet.shared import layout
from depthfleet.shared.artifacts import ARTIFACTS, BY_FILENAME, COMPACT, FULL_SIZE, raw_depth, \
    render_full_size
from depthfleet.shared.imaging.encode import decode_pfm
from depthfleet.shared.jobs import JobStore, NewItem, connect
from depthfleet.shared.settings import Settings
from depthfleet.shared.storage import open_storage
from support import System, poll, running, s3_listing, s3_location, s3_system, system_env

pytestmark = pytest.mark.integration

BUCKET = "depthfleet-compact"
KEYS = {"alice": "key-alice-compact", "bob": "key-bob-compact"}
TENANT = "alice"
CAMERA_BUDGET = 1_000_000  # bytes under one 12 MP photo's result prefix (issue #13)
SMALL_BUDGET = 300_000  # ... under one 640x427-class photo's
SMALL_SIZES = {  # (source in testdata, width, height): the small photos' class
    "landscape-coffee.jpg": ("coffee.jpg", 640, 427),
    "landscape-chelsea.jpg": ("chelsea.jpg", 640, 427),
    "portrait-grace_hopper.jpg": ("grace_hopper.jpg", 427, 640),
    "square-astronaut.jpg": ("astronaut.png", 640, 640),
    "panorama-hubble.jpg": ("hubble_deep_field.jpg", 800, 200),
}
PORTRAIT_SOURCES = ("grace_hopper.jpg", "coffee.jpg")  # 3024x4032, beside make_big's 4032x3024
PREDICT_SIDE = 200  # `predict --max-side`: shrinks every reference photo but the tiny ones
API_SIDE = 777  # a second size, checked against render_full_size of the served depth_raw
INLINE_MAX_PIXELS = 2_000_000  # bigger photos are fetched redirected only (24 MP PFM: 96 MB)
COMPACT_FILES = {ARTIFACTS[name].filename for name in COMPACT} | {"meta.json"}
FULL_FILES = {ARTIFACTS[name].filename for name in FULL_SIZE}
OFFERED = {*COMPACT, *FULL_SIZE}  # per item of a job without 3D outputs
JOB_TIMEOUT = 300


def auth(tenant: str = TENANT) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


# -- the system and its jobs -----------------------------------------------------------------
@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_db_url, s3_server, checkpoint_path) -> Iterator[System]:
    keys = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())
    system = s3_system(tmp_path_factory.mktemp("compact"), redis_db_url, s3_server,
                       checkpoint_path, BUCKET, DEPTHFLEET_API_KEYS=keys)
    with running(system):
        yield system


@pytest.fixture(scope="module")
def alice(system) -> Iterator[Client]:
    with Client(system.api_url, api_key=KEYS[TENANT], timeout=120) as client:
        yield client


def run_job(client: Client, paths: list[Path],
            options: dict[str, Any] | None = None) -> tuple[dict, dict[str, dict]]:
    """Submit ``paths`` as one job and wait for it: (final status, items by name)."""
    job = client.submit_files(paths, options)
    final = poll(lambda: client.status(job["id"]),
                 lambda status: status["pending"] == 0 and not status["ingesting"], JOB_TIMEOUT)
    assert final["status"] == "succeeded", final
    return final, {item["name"]: item for item in client.iter_items(job["id"])}


def result_prefix(item: dict) -> str:
    """Every stored variant of the item's photo lives under this prefix."""
    return f"t/{TENANT}/results/{item['sha256'][:2]}/{item['sha256']}/"


# -- fetching artifacts ----------------------------------------------------------------------
def redirect_location(system: System, url: str, headers: dict | None = None,
                      **params: Any) -> str:
    """The default answer for an artifact: a 302 to a presigned URL on the S3 server."""
    response = requests.get(url, headers=headers or auth(), params=params,
                            allow_redirects=False, timeout=120)
    assert response.status_code == 302, (url, params, response.status_code, response.text[:300])
    location = response.headers["Location"]
    assert location.startswith(system.env["DEPTHFLEET_S3_ENDPOINT"] + "/"), location
    return location


def via_storage(system: System, url: str, **params: Any) -> bytes:
    """An artifact's bytes by its default route: the redirect, followed."""
    location = redirect_location(system, url, **params)
    response = requests.get(location, timeout=120)
    assert response.status_code == 200, (location, response.status_code)
    return response.content


def inline(url: str, **params: Any) -> bytes:
    """An artifact's bytes streamed by the API itself (``?inline=1``, for the web page)."""
    response = requests.get(url, headers=auth(), params={**params, "inline": "1"},
                            allow_redirects=False, timeout=120)
    assert response.status_code == 200, (url, params, response.status_code, response.text[:300])
    content_type = ARTIFACTS[BY_FILENAME[url.rsplit("/", 1)[1]]].content_type
    assert response.headers["Content-Type"].startswith(content_type), response.headers
    return response.content


def error_code(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def assert_matches(filename: str, ours: bytes, reference: bytes, what: object) -> None:
    """The issue's tolerances: depth.pfm within 1e-6 of the depth range, PNGs within one
    level per pixel (compared decoded, so encoder settings do not matter)."""
    if filename.endswith(".pfm"):
        a, b = decode_pfm(ours), decode_pfm(reference)
        assert a.shape == b.shape, (what, a.shape, b.shape)
        span = float(b.max() - b.min()) or 1.0
        assert float(np.abs(a - b).max()) <= 1e-6 * span, what
        return
    a, b = (cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            for data in (ours, reference))
    assert (a.dtype, a.shape) == (b.dtype, b.shape), (what, a.shape, b.shape)
    assert int(np.abs(a.astype(np.int32) - b).max()) <= 1, what


# -- acceptance 1: what a photo costs in the bucket ------------------------------------------
def _write_jpeg(path: Path, bgr: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, BIG_QUALITY])
    return path


def _fitted(bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """The central crop of ``bgr`` with the aspect of ``width`` x ``height``, resized to it."""
    rows, cols = bgr.shape[:2]
    if cols * height > rows * width:  # too wide: crop the sides
        keep = rows * width // height
        bgr = bgr[:, (cols - keep) // 2:(cols - keep) // 2 + keep]
    else:
        keep = cols * height // width
        bgr = bgr[(rows - keep) // 2:(rows - keep) // 2 + keep]
    return cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)


def camera_photos(folder: Path) -> list[Path]:
    """12 MP JPEGs as bench makes them (quality 92, sensor-like grain): two landscape
    4032x3024 from ``make_big``, two portrait 3024x4032 by the same recipe on turned photos."""
    photos = make_big(folder, 2)
    for seed, source in enumerate(PORTRAIT_SOURCES, start=len(photos)):
        turned = cv2.rotate(cv2.imread(str(PHOTOS_DIR / source)), cv2.ROTATE_90_CLOCKWISE)
        big = _phone_sized(turned, np.random.default_rng(seed))
        photos.append(_write_jpeg(folder / f"portrait-{Path(source).stem}.jpg",
                                  cv2.rotate(big, cv2.ROTATE_90_COUNTERCLOCKWISE)))
    return photos


def small_photos(folder: Path) -> list[Path]:
    """640x427, 427x640, 640x640 and 800x200 JPEGs cut from the reference photos."""
    return [_write_jpeg(folder / name, _fitted(cv2.imread(str(PHOTOS_DIR / source)), w, h))
            for name, (source, w, h) in SMALL_SIZES.items()]


@pytest.fixture(scope="module")
def budget_job(tmp_path_factory, alice) -> dict[str, tuple[dict, int, Path]]:
    """One default job of the camera and small photos: name -> (item, budget, path)."""
    folder = tmp_path_factory.mktemp("budget")
    budgets = {**{p: CAMERA_BUDGET for p in camera_photos(folder / "camera")},
               **{p: SMALL_BUDGET for p in small_photos(folder)}}
    _, items = run_job(alice, list(budgets))
    return {path.name: (items[path.name], budget, path) for path, budget in budgets.items()}


def test_results_fit_beside_the_archive(system, budget_job, checkpoint_sha256):
    """Acceptance 1, summed over every object under the photo's result prefix, across the
    class of input (landscape, portrait, square, panorama). Full-size renders made on read
    go under ``cache/`` (expired by the reaper), outside the result prefix: not counted."""
    camera_sizes = set()
    for name, (item, budget, path) in budget_job.items():
        assert item["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), name
        if budget == CAMERA_BUDGET:
            camera_sizes.add((item["width"], item["height"]))
        else:
            assert (item["width"], item["height"]) == SMALL_SIZES[name][1:], name
        stored = s3_listing(system, result_prefix(item))
        total = sum(size for size, _ in stored.values())
        assert 0 < total <= budget, (name, total, {k: s for k, (s, _) in stored.items()})
        folders = {key.removeprefix(result_prefix(item)).split("/")[0] for key in stored}
        assert folders == {f"w{checkpoint_sha256[:16]}-full-raw"}, (name, folders)
        files = {key.rsplit("/", 1)[1] for key in stored}
        assert files == COMPACT_FILES, (name, files)  # nothing full-size stored by default
    assert camera_sizes == {(4032, 3024), (3024, 4032)}


# -- acceptance 2: renders on read equal `depthfleet predict` --------------------------------
@pytest.fixture(scope="module")
def reference_inputs(tmp_path_factory) -> Path:
    """Every testdata photo and every parity photo in one folder; parity ones are prefixed
    (``parity-astronaut.png``), since their names clash with testdata's."""
    folder = tmp_path_factory.mktemp("reference")
    for photo in load_manifest(PHOTOS_DIR):
        (folder / photo["file"]).symlink_to(PHOTOS_DIR / photo["file"])
    for path in sorted(PARITY_DIR.glob("*.png")):
        (folder / f"parity-{path.name}").symlink_to(path)
    return folder


def _predict(inputs: Path, out: Path, env: dict[str, str],
             max_side: int | None) -> dict[str, dict]:
    """``depthfleet predict`` over ``inputs``: its manifest records by name, each with
    ``files`` (artifact filename -> path)."""
    command = [sys.executable, "-m", "depthfleet.cli", "predict", str(inputs), "--out", str(out)]
    if max_side is not None:
        command += ["--max-side", str(max_side)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {record["name"]: {**record, "files": {
        ARTIFACTS[name].filename: out / rel for name, rel in record["artifacts"].items()}}
        for record in records}


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, checkpoint_path, reference_inputs) -> dict[int | None, dict]:
    """``predict``'s records at full size (key None) and at ``--max-side PREDICT_SIDE``."""
    root = tmp_path_factory.mktemp("predict")
    env = system_env("", "", None, checkpoint_path, root / "cache")
    return {side: _predict(reference_inputs, root / f"out-{side}", env, side)
            for side in (None, PREDICT_SIDE)}


@pytest.fixture(scope="module")
def reference_job(alice, reference_inputs) -> dict[str, dict]:
    """One default (compact) job of every reference photo: items by name."""
    return run_job(alice, sorted(reference_inputs.iterdir()))[1]


def test_full_size_renders_match_predict(system, reference_job, predicted):
    full = predicted[None]
    assert set(reference_job) == set(full) and len(full) == len(load_manifest(PHOTOS_DIR)) + 3
    for name, item in reference_job.items():
        reference = full[name]
        assert reference["status"] == "succeeded", reference
        assert (item["width"], item["height"]) == (reference["width"], reference["height"])
        span = reference["depth_max"] - reference["depth_min"] or 1.0
        for end in ("depth_min", "depth_max"):
            assert abs(item[end] - reference[end]) <= 1e-6 * span, (name, end)
        assert set(item["artifacts"]) == OFFERED, name
        for artifact in FULL_SIZE:
            filename, url = ARTIFACTS[artifact].filename, item["artifacts"][artifact]
            served = via_storage(system, url)
            assert_matches(filename, served, reference["files"][filename].read_bytes(),
                           (name, filename))
            if item["width"] * item["height"] <= INLINE_MAX_PIXELS:
                assert inline(url) == served, (name, filename)
        for key in s3_listing(system, result_prefix(item)):  # renders went to cache/ only
            folder, filename = key.rsplit("/", 2)[-2:]
            assert not (folder.endswith("-full-raw") and filename in FULL_FILES), key


def test_max_side_renders_match_predict(system, reference_job, predicted):
    capped, shrunk = predicted[PREDICT_SIDE], 0
    for name, item in reference_job.items():
        longest = max(item["width"], item["height"])
        shrunk += longest > PREDICT_SIDE
        for artifact in FULL_SIZE:
            filename, url = ARTIFACTS[artifact].filename, item["artifacts"][artifact]
            served = via_storage(system, url, max_side=PREDICT_SIDE)
            assert_matches(filename, served, capped[name]["files"][filename].read_bytes(),
                           (name, filename))
            if artifact == "depth_png":
                png = cv2.imdecode(np.frombuffer(served, np.uint8), cv2.IMREAD_UNCHANGED)
                assert max(png.shape) == min(longest, PREDICT_SIDE), (name, png.shape)
                assert inline(url, max_side=PREDICT_SIDE) == served, name
    assert shrunk >= len(reference_job) - 2  # all but tiny_1x1 and tiny_8x8


def test_any_max_side_is_render_full_size_of_served_depth_raw(system, reference_job):
    """A size no ``predict`` run was made for: the API's render must be exactly what
    ``render_full_size`` makes from the depth_raw it serves (the one drawing function)."""
    for name, item in reference_job.items():
        raw = raw_depth(via_storage(system, item["artifacts"]["depth_raw"]),
                        item["width"], item["height"])
        expected = render_full_size(raw, FULL_SIZE, API_SIDE)
        for artifact in FULL_SIZE:
            url = item["artifacts"][artifact]
            assert via_storage(system, url, max_side=API_SIDE) == expected[artifact], \
                (name, artifact)
        assert inline(item["artifacts"]["depth_pfm"], max_side=API_SIDE) == \
            expected["depth_pfm"], name


# -- the choice kept: storing full-size files ------------------------------------------------
def test_stored_full_size_outputs_get_their_own_folder(system, alice, reference_inputs,
                                                       reference_job, checkpoint_sha256):
    """``options.outputs`` stores full-size files beside the compact set, under a folder named
    for them, so stored variants never mix: the compact result of the same photo is left as
    it was, the stored depth.png is served as stored (nothing rendered for it), and what is
    not stored (depth.pfm) is rendered on read."""
    compact_item = reference_job["coffee.jpg"]
    results = result_prefix(compact_item)
    compact = f"{results}w{checkpoint_sha256[:16]}-full-raw/"
    stored = f"{results}w{checkpoint_sha256[:16]}-full-raw+depth_png+heatmap_png/"
    compact_before = s3_listing(system, compact)
    assert {key.removeprefix(compact) for key in compact_before} == COMPACT_FILES
    status, items = run_job(alice, [reference_inputs / "coffee.jpg"],
                            {"outputs": ["depth_png", "heatmap_png"]})
    assert status["options"]["outputs"] == ["depth_png", "heatmap_png", *COMPACT]
    item = items["coffee.jpg"]
    assert set(item["artifacts"]) == OFFERED

    listing = s3_listing(system, results)
    assert {key.removeprefix(results).split("/")[0] for key in listing} == \
        {compact.removeprefix(results).strip("/"), stored.removeprefix(results).strip("/")}
    assert {key.removeprefix(stored) for key in listing if key.startswith(stored)} == \
        COMPACT_FILES | {"depth.png", "heatmap.png"}

    cache = f"{layout.CACHE_PREFIX}{stored}"
    location = redirect_location(system, item["artifacts"]["depth_png"])
    _, root = s3_location(system)
    assert unquote(urlparse(location).path).endswith(f"/{root}{stored}depth.png"), location
    assert requests.get(location, timeout=60).content == \
        via_storage(system, compact_item["artifacts"]["depth_png"])  # one drawing, every path
    assert s3_listing(system, cache) == {}
    via_storage(system, item["artifacts"]["depth_pfm"])
    size = f"{item['width']}x{item['height']}"
    assert set(s3_listing(system, cache)) == {f"{cache}{size}/depth.pfm"}
    assert s3_listing(system, compact) == compact_before


# -- the legacy: results stored before compact results ---------------------------------------
def legacy_job(system: System, photo: bytes, artifacts: dict[str, bytes], weights_sha: str,
               record: dict[str, Any]) -> str:
    """A job as the fleet wrote it before depth_raw existed, through the real job store and
    storage: full-size files under the old ``w<sha16>-full`` folder, no depth_raw."""
    settings = Settings.from_env(system.env)
    storage = open_storage(settings)
    store = JobStore(connect(settings.redis_url or ""), settings.job_ttl_days * 86400)
    sha = hashlib.sha256(photo).hexdigest()
    source = layout.input_key(TENANT, sha)
    storage.put(source, photo, "image/jpeg")
    folder = layout.result_prefix(TENANT, sha, f"w{weights_sha[:16]}-full")
    keys = {name: layout.artifact_key(folder, ARTIFACTS[name].filename) for name in artifacts}
    for name, blob in artifacts.items():
        storage.put(keys[name], blob, ARTIFACTS[name].content_type)
    created = store.create_job(TENANT, [NewItem("legacy.jpg", source, sha256=sha,
                                                size=len(photo))],
                               {"outputs": list(FULL_SIZE), "max_side": None})
    assert store.succeed_item(created.job_id, 0, {
        "width": record["width"], "height": record["height"], "depth_min": record["depth_min"],
        "depth_max": record["depth_max"], "artifacts": keys, "sha256": sha, "reused": False})
    return created.job_id


def test_results_stored_before_compact_stay_readable(system, alice, predicted, checkpoint_sha256,
                                                     s3_credentials):
    reference = predicted[None]["chelsea.jpg"]
    artifacts = {name: reference["files"][ARTIFACTS[name].filename].read_bytes()
                 for name in FULL_SIZE}
    photo = tagged((PHOTOS_DIR / "chelsea.jpg").read_bytes(), b"stored before #13")
    job_id = legacy_job(system, photo, artifacts, checkpoint_sha256, reference)

    assert alice.status(job_id)["status"] == "succeeded"
    (item,) = list(alice.iter_items(job_id))
    assert set(item["artifacts"]) == set(FULL_SIZE), item["artifacts"]
    for name, blob in artifacts.items():
        url = item["artifacts"][name]
        assert via_storage(system, url) == blob, name
        assert inline(url) == blob, name
        assert via_storage(system, url, max_side=65535) == blob, name  # shrinks nothing
        refused = requests.get(url, headers=auth(), params={"max_side": 100}, timeout=30)
        assert error_code(refused) == (409, "not_renderable"), (name, refused.text)
    base = item["artifacts"]["depth_png"].rsplit("/", 1)[0]
    for filename in ("depth_raw.tiff", "thumbnail.jpg"):
        missing = requests.get(f"{base}/{filename}", headers=auth(), timeout=30)
        assert error_code(missing) == (404, "not_found"), filename


# -- render on read: argument, single flight, tenants ----------------------------------------
@pytest.mark.parametrize("bad", ["0", "abc", "70000", "-1", "1.5", "", "\u00b2"])
def test_invalid_max_side_is_refused(reference_job, bad):
    url = reference_job["coffee.jpg"]["artifacts"]["depth_png"]
    response = requests.get(url, headers=auth(), params={"max_side": bad}, timeout=30)
    assert error_code(response) == (400, "invalid_max_side"), (bad, response.text)


def test_identical_reads_render_once(system, budget_job, moto_server: MotoServer):
    """Eight clients ask at once for a 12 MP depth.png nobody rendered yet: all get the
    same bytes, one object is written under cache/, by one PUT."""
    item = next(item for item, budget, _ in budget_job.values()
                if budget == CAMERA_BUDGET and item["width"] > item["height"])
    (folder,) = {key.rsplit("/", 1)[0] for key in s3_listing(system, result_prefix(item))}
    cache = f"{layout.CACHE_PREFIX}{folder}/"
    assert s3_listing(system, cache) == {}
    start = threading.Barrier(8)

    def read(_: int) -> bytes:
        start.wait()
        response = requests.get(item["artifacts"]["depth_png"], headers=auth(), timeout=120)
        assert response.status_code == 200, response.status_code
        return response.content

    with ThreadPoolExecutor(8) as pool:
        bodies = set(pool.map(read, range(8)))
    assert len(bodies) == 1
    png = cv2.imdecode(np.frombuffer(bodies.pop(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert (png.dtype, png.shape) == (np.uint16, (3024, 4032))
    (key,) = s3_listing(system, cache)
    assert key == f"{cache}4032x3024/depth.png"
    bucket, root = s3_location(system)
    assert moto_server.request_count("PUT", f"/{bucket}/{root}{key}") == 1


def test_other_tenants_get_nothing(system, reference_job):
    item = reference_job["coffee.jpg"]
    cache_before = s3_listing(system, layout.CACHE_PREFIX)
    for params in ({}, {"max_side": 123}, {"inline": "1"}):
        for artifact in ("heatmap_png", "depth_raw"):
            response = requests.get(item["artifacts"][artifact], headers=auth("bob"),
                                    params=params, allow_redirects=False, timeout=30)
            assert error_code(response) == (404, "not_found"), (artifact, params)
    assert s3_listing(system, layout.CACHE_PREFIX) == cache_before  # nothing rendered for bob

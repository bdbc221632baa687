"""The web page in a real browser: Debian's Chromium, driven by Playwright, against the real API
process, two Celery worker processes, Redis and an S3 server. Screenshots of what the browser
showed go to ``test-artifacts/web/``; the ones the README shows to ``docs/screenshots/``.
"""

from __future__ import annotations

import io
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest
import requests
from playwright.sync_api import Locator, Page, Response, Route, expect

from conftest import BAD_DIR, PHOTOS_DIR
from depthfleet.shared.artifacts import PREVIEW_SIDE, raw_depth, render_full_size
from depthfleet.shared.imaging.encode import decode_pfm
from support import System, poll, running, s3_system, tiny_jpeg
from webpage import (
    DESKTOP,
    WAIT_MS,
    card,
    drop_files,
    followed_job,
    natural_size,
    phone_tab,
    screenshot,
    small_targets,
    swipe,
    tab,
    wait_followed,
    wait_loaded,
)

pytestmark = pytest.mark.integration

API_KEY = "key-web-4d1f"
PHOTOS = {"chelsea.jpg": (451, 300), "coffee.jpg": (600, 400)}  # name: (width, height)
BAD = "truncated_40pct.jpg"
BATCH = 300
TWELVE_MP = (4000, 3000)
PAGE_BUDGET = 3 * 1024 * 1024  # a page of twelve results before any large view is opened


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_db_url, s3_server, checkpoint_path) -> Iterator[System]:
    """A keyless API (loopback clients, as tenant ``local``) and two one-thread workers."""
    system = s3_system(tmp_path_factory.mktemp("web"), redis_db_url, s3_server, checkpoint_path,
                       "depthfleet-web")
    with running(system):
        yield system


@pytest.fixture(scope="module")
def keyed_api(system, tmp_path_factory) -> Iterator[System]:
    """A second API process with API keys, in front of the same Redis, storage and workers."""
    keyed = System({**system.env, "DEPTHFLEET_API_KEYS": f"web:{API_KEY}"},
                   tmp_path_factory.mktemp("keyed-logs"))
    try:
        keyed.start_api(processes=1)
        yield keyed
    finally:
        keyed.stop()


@pytest.fixture()
def requested(page) -> list[str]:
    """Every URL the tab asks for."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


def artifacts_fetched(urls: list[str]) -> list[str]:
    """The artifact file names among ``urls`` (``…/items/<i>/<filename>``), in order."""
    paths = (urlparse(url).path for url in urls)
    return [m.group(1) for m in map(re.compile(r"/items/\d+/([^/]+)$").search, paths) if m]


def download(page: Page, link: Locator) -> tuple[str, bytes]:
    with page.expect_download() as info:
        link.click()
    return info.value.suggested_filename, Path(info.value.path()).read_bytes()


def progress_values(page: Page, total: int, timeout: float = 120) -> list[int]:
    """The batch progress bar's value, read every 0.1 s until it shows ``total`` done."""
    progress = page.get_by_label("Progress", exact=True)
    deadline, values = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        value, maximum = progress.evaluate("bar => [bar.value, bar.max]")
        if maximum == total:
            values.append(int(value))
            if value == total:
                return values
        time.sleep(0.1)
    raise AssertionError(f"progress never reached {total}: {values[-5:]}")


def upload(page: Page, paths: list[Path], before: str = "") -> str:
    """Choose ``paths`` in the file picker; the batch the page then follows."""
    page.get_by_label("Photos or archives").set_input_files(paths)
    return wait_followed(page, before)


def shows_batch(page: Page, job_id: str) -> None:
    expect(page.locator("#job-id")).to_have_text(f"Batch {job_id}")


def heatmap(page: Page, name: str) -> Locator:
    return card(page, name).get_by_role("img", name=f"Depth heatmap of {name}")


def wait_done(page: Page, state: str = "Done") -> None:
    """The batch finished (the first one of a session waits for the workers to warm up)."""
    expect(page.locator("#job-state")).to_have_text(state, timeout=WAIT_MS)


def viewer(page: Page) -> Locator:
    return page.locator("dialog.viewer")


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def photo_files(tmp_path: Path, count: int, prefix: str = "photo") -> list[Path]:
    paths = [tmp_path / f"{prefix}-{i:03d}.jpg" for i in range(count)]
    for seed, path in enumerate(paths):
        path.write_bytes(tiny_jpeg(seed))
    return paths


def test_photos_show_beside_heatmaps_with_reasons_and_downloads(system, page, requested):
    page.goto(f"{system.api_url}/")
    page.get_by_label("Photos or archives").set_input_files(
        [PHOTOS_DIR / name for name in PHOTOS] + [BAD_DIR / BAD])
    for name in PHOTOS:
        for image in (f"Depth heatmap of {name}", f"Photo {name}"):
            shown = card(page, name).get_by_role("img", name=image)
            wait_loaded(shown)
            assert max(natural_size(shown)) <= PREVIEW_SIDE, (image, natural_size(shown))
    grid = set(artifacts_fetched(requested))  # the grid shows the compact previews only
    assert grid <= {"heatmap_preview.jpg", "thumbnail.jpg"}, grid

    items = requests.get(f"{system.api_url}/v1/jobs/{followed_job(page)}/items", timeout=10)
    bad_item = next(item for item in items.json()["items"] if item["name"] == BAD)
    for shown in (card(page, BAD), page.locator("#failure-list")):
        expect(shown).to_contain_text("The image is damaged or incomplete")
        expect(shown).to_contain_text(bad_item["error"]["message"])
    expect(page.locator("#job-state")).to_have_text("Done; some items failed")
    expect(page.locator("#job-counts")).to_contain_text("3 of 3 done · 2 succeeded · 1 failed")
    expect(page.get_by_role("button", name="Retry failed items")).to_be_hidden()  # bad input
    legend = page.get_by_role("img", name=re.compile("Inferno colour scale"))
    expect(legend).to_be_visible()
    expect(page.locator(".legend")).to_contain_text("far")
    expect(page.locator(".legend")).to_contain_text("near")

    slider = card(page, "chelsea.jpg").get_by_role("slider")
    slider.focus()
    page.keyboard.press("End")
    expect(slider).to_have_attribute("aria-valuetext", "100% photo, 0% depth")

    chelsea = card(page, "chelsea.jpg")
    width, height = PHOTOS["chelsea.jpg"]
    filename, depth_png = download(page, chelsea.get_by_role("link", name="16-bit depth PNG"))
    depth = cv2.imdecode(np.frombuffer(depth_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert filename == "chelsea.depth.png"
    assert depth.dtype == np.uint16 and depth.shape == (height, width)
    filename, data = download(page, chelsea.get_by_role("link", name="Depth PFM (float32)"))
    assert filename == "chelsea.depth.pfm" and decode_pfm(data).shape == (height, width)
    filename, data = download(page, chelsea.get_by_role("link", name="Heatmap PNG"))
    heatmap_png = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert filename == "chelsea.heatmap.png" and heatmap_png.shape == (height, width, 3)
    raw_link = chelsea.get_by_role("link", name="Network output, float32 TIFF")
    filename, data = download(page, raw_link)
    assert filename == "chelsea.depth_raw.tiff"  # and the full-size map is rebuilt from it exactly
    assert render_full_size(raw_depth(data, width, height), ["depth_png"])["depth_png"] == depth_png

    filename, data = download(page, page.get_by_role("link", name="Download all (zip)"))
    assert filename.endswith(".zip"), filename
    names = sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert {"chelsea.depth.png", "chelsea.heatmap.png", "coffee.depth.png",
            "coffee.heatmap.png"} <= {Path(name).name for name in names}, names
    screenshot(page, "photos.png", full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "photos-phone.png", full_page=True)
    foreign = [url for url in requested
               if not url.startswith((f"{system.api_url}/", "blob:", "data:"))]
    assert not foreign, foreign  # nothing from another origin: the page works offline


def test_each_batch_is_an_address_with_history_and_a_list(system, page, browser):
    page.goto(f"{system.api_url}/")
    expect(page.get_by_role("heading", name="Photos into depth")).to_be_visible()
    screenshot(page, "landing-1280.png", docs=True)
    first = upload(page, [PHOTOS_DIR / "chelsea.jpg"])
    wait_loaded(heatmap(page, "chelsea.jpg"))
    second = upload(page, [PHOTOS_DIR / "coffee.jpg"], before=first)
    wait_loaded(heatmap(page, "coffee.jpg"))

    recent = page.locator("#batch-list a")
    expect(recent.first).to_have_attribute("href", f"#job={second}")  # newest first
    expect(recent.nth(1)).to_have_attribute("href", f"#job={first}")
    expect(recent.first).to_have_attribute("aria-current", "page")

    page.go_back()  # the batch before, not away from the page
    shows_batch(page, first)
    wait_loaded(heatmap(page, "chelsea.jpg"))
    expect(card(page, "coffee.jpg")).to_have_count(0)
    page.go_forward()
    shows_batch(page, second)
    wait_loaded(heatmap(page, "coffee.jpg"))
    page.go_back()
    page.go_back()
    expect(page.get_by_role("heading", name="Photos into depth")).to_be_visible()
    expect(page.locator("#job-section")).to_be_hidden()

    page.goto(f"{system.api_url}/#job={second}")  # a link pasted into a tab showing nothing
    shows_batch(page, second)
    page.goto(f"{system.api_url}/#job={first}")  # and into the tab showing the other batch
    shows_batch(page, first)
    wait_loaded(heatmap(page, "chelsea.jpg"))
    expect(card(page, "coffee.jpg")).to_have_count(0)
    page.locator(f"#batch-list a[href='#job={second}']").click()  # from the list
    shows_batch(page, second)
    with tab(browser) as other:  # a link opened in a new tab
        other.goto(f"{system.api_url}/#job={first}")
        shows_batch(other, first)
        wait_loaded(heatmap(other, "chelsea.jpg"))  # and the photo, from the server
        wait_loaded(card(other, "chelsea.jpg").get_by_role("img", name="Photo chelsea.jpg"))
        expect(other.locator("#job-state")).to_have_text("Done")


def test_a_single_result_is_large_above_the_fold_and_opens_large(system, page, requested):
    page.goto(f"{system.api_url}/")
    upload(page, [PHOTOS_DIR / "coffee.jpg"])
    shown = heatmap(page, "coffee.jpg")
    wait_loaded(shown)
    box = shown.bounding_box()
    assert box and box["y"] + box["height"] <= DESKTOP["height"], box  # above the fold
    assert box["width"] >= 480, box  # 234 px before
    assert not any(name in ("photo.jpg", "heatmap.png") for name in artifacts_fetched(requested))

    shown.click(position={"x": box["width"] * 0.75, "y": box["height"] / 2})  # it enlarges
    large = viewer(page).get_by_role("img", name="Depth heatmap of coffee.jpg")
    wait_loaded(large)
    assert natural_size(large) == PHOTOS["coffee.jpg"]  # the screen is larger than the photo
    wait_loaded(viewer(page).get_by_role("img", name="Photo coffee.jpg"))
    assert any(urlparse(url).path.endswith("/heatmap.png") and "max_side=" in urlparse(url).query
               for url in requested), requested  # at the screen's size
    box = large.bounding_box()
    assert box and box["width"] >= 800, box
    page.keyboard.press("Escape")
    expect(viewer(page)).to_be_hidden()


def test_large_view_steps_with_keys_and_swipes_and_turns_in_3d(system, page, browser, tmp_path,
                                                                requested):
    names = ["chelsea.jpg", "coffee.jpg", "grace_hopper.jpg", "astronaut.png"]
    archive = tmp_path / "album.zip"
    with zipfile.ZipFile(archive, "w") as album:
        for name in names:
            album.write(PHOTOS_DIR / name, f"holiday/{name}")
    page.goto(f"{system.api_url}/")
    upload(page, [archive])
    entries = [f"holiday/{name}" for name in names]
    for entry in entries:  # originals from the server, for archive entries too
        wait_loaded(card(page, entry).get_by_role("img", name=f"Photo {entry}"))
    wait_done(page)
    screenshot(page, "batch-1280.png", docs=True)

    order = [card_name.strip() for card_name in page.locator("#items .card-name").all_inner_texts()]
    page.get_by_role("button", name=f"Enlarge {order[0]}").click()
    title = viewer(page).locator(".viewer-title")
    expect(title).to_have_text(order[0])
    wait_loaded(viewer(page).get_by_role("img", name=f"Photo {order[0]}"))
    page.keyboard.press("ArrowRight")
    expect(title).to_have_text(order[1])
    page.keyboard.press("ArrowLeft")
    expect(title).to_have_text(order[0])
    stage = viewer(page).locator(".viewer-stage")
    box = stage.bounding_box()
    assert box
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2, steps=6)
    page.mouse.up()  # a swipe to the left: the next one
    expect(title).to_have_text(order[1])
    wait_loaded(viewer(page).get_by_role("img", name=f"Depth heatmap of {order[1]}"))
    screenshot(page, "large-view-1280.png", docs=True)

    viewer(page).get_by_role("button", name="3D").click()
    canvas = viewer(page).locator("canvas")
    expect(canvas).to_have_attribute("data-renderer", re.compile("webgl|2d"))
    expect(viewer(page)).to_contain_text("Relative depth, not a measurement")
    page.wait_for_timeout(300)
    screenshot(page, "3d-1280.png", docs=True)
    page.keyboard.press("Escape")
    expect(viewer(page)).to_be_hidden()
    foreign = [url for url in requested
               if not url.startswith((f"{system.api_url}/", "blob:", "data:"))]
    assert not foreign, foreign  # the 3D view too: nothing from another origin


def turns_with_input(page: Page) -> str:
    """Open the 3D view of the first result; it turns with the pointer and the device's tilt.

    Returns the renderer the browser used. Reduced motion is asked for, so without input the
    view stays still and every change below comes from the input alone.
    """
    page.locator("#items .card button", has_text="Enlarge").first.click()
    viewer(page).get_by_role("button", name="3D").click()
    canvas = viewer(page).locator("canvas")
    expect(canvas).to_have_attribute("data-renderer", re.compile("webgl|2d"))
    page.wait_for_timeout(300)
    box = canvas.bounding_box()
    assert box and box["width"] > 200, box
    pixels = "c => c.toDataURL()"
    still = canvas.evaluate(pixels)
    page.wait_for_timeout(300)
    assert canvas.evaluate(pixels) == still  # nothing moves on its own
    page.mouse.move(box["x"] + box["width"] * 0.05, box["y"] + box["height"] / 2)
    page.wait_for_function("c => Number(c.dataset.yaw) < -0.3", arg=canvas.element_handle())
    left = canvas.evaluate(pixels)
    page.mouse.move(box["x"] + box["width"] * 0.95, box["y"] + box["height"] / 2)
    page.wait_for_function("c => Number(c.dataset.yaw) > 0.3", arg=canvas.element_handle())
    assert canvas.evaluate(pixels) not in (still, left)
    page.evaluate("""() => window.dispatchEvent(new DeviceOrientationEvent("deviceorientation",
                         { alpha: 0, beta: 10, gamma: 0 }))""")
    page.evaluate("""() => window.dispatchEvent(new DeviceOrientationEvent("deviceorientation",
                         { alpha: 0, beta: 25, gamma: -25 }))""")
    page.wait_for_function("c => Number(c.dataset.yaw) < -0.3 && Number(c.dataset.pitch) > 0.1",
                           arg=canvas.element_handle())
    blank = canvas.evaluate("""c => {
        const copy = document.createElement("canvas");
        [copy.width, copy.height] = [32, 32];
        const g = copy.getContext("2d");
        g.drawImage(c, 0, 0, 32, 32);
        const d = g.getImageData(0, 0, 32, 32).data;
        return new Set(Array.from({ length: 1024 }, (_, i) => d[4 * i] >> 4)).size < 4;
    }""")
    assert not blank  # the photo is drawn, not an empty canvas
    return canvas.get_attribute("data-renderer") or ""


def test_3d_view_turns_with_pointer_and_tilt_in_webgl_and_without(system, browser):
    with tab(browser, reduced_motion="reduce") as page:
        page.goto(f"{system.api_url}/")
        upload(page, [PHOTOS_DIR / "chelsea.jpg"])
        wait_loaded(heatmap(page, "chelsea.jpg"))
        first = turns_with_input(page)
    # Without WebGL (old or locked-down browsers): the canvas 2D fallback, just as alive.
    no_webgl = """{ const get = HTMLCanvasElement.prototype.getContext;
        HTMLCanvasElement.prototype.getContext = function (kind, ...rest) {
          return kind.startsWith("webgl") ? null : get.call(this, kind, ...rest); }; }"""
    with tab(browser, reduced_motion="reduce") as page:
        page.add_init_script(no_webgl)
        page.goto(f"{system.api_url}/")
        upload(page, [PHOTOS_DIR / "chelsea.jpg"])
        wait_loaded(heatmap(page, "chelsea.jpg"))
        assert turns_with_input(page) == "2d"
    assert first in ("webgl", "2d")


def test_drops_anywhere_and_during_an_upload_are_sent(system, page):
    page.goto(f"{system.api_url}/")
    first = upload(page, [PHOTOS_DIR / "coffee.jpg"])
    wait_loaded(heatmap(page, "coffee.jpg"))
    drop_files(page, "#items", {"dropped.jpg": tiny_jpeg(1)})  # onto the results
    dropped = wait_followed(page, first)
    wait_loaded(heatmap(page, "dropped.jpg"))

    held: list[Route] = []
    page.route("**/v1/jobs", lambda route: held.append(route)
               if route.request.method == "POST" else route.continue_())
    page.get_by_label("Photos or archives").set_input_files([PHOTOS_DIR / "chelsea.jpg"])
    while not held:
        page.wait_for_timeout(50)
    drop_files(page, "header", {"later.jpg": tiny_jpeg(2)})  # while the first is being sent
    expect(page.locator("#upload-queue")).to_have_text(
        "Waiting to send as the next batch: 1 file.")
    held.pop().continue_()
    page.unroute("**/v1/jobs")
    wait_loaded(heatmap(page, "later.jpg"))  # the queued drop, as a batch of its own, after
    later = followed_job(page)
    expect(page.locator("#upload-queue")).to_be_hidden()
    page.go_back()
    wait_loaded(heatmap(page, "chelsea.jpg"))
    assert followed_job(page) not in (first, dropped, later)


def test_a_full_queue_is_retried_after_the_servers_retry_after(system, page):
    page.goto(f"{system.api_url}/")
    posts: list[float] = []

    def busy_once(route: Route) -> None:
        if route.request.method != "POST":
            return route.continue_()
        posts.append(time.monotonic())
        if len(posts) > 1:
            return route.continue_()
        route.fulfill(status=429, headers={"Retry-After": "3"}, json={"error": {
            "code": "queue_full", "message": "too much work is queued; retry later"}})

    page.route("**/v1/jobs", busy_once)
    page.get_by_label("Photos or archives").set_input_files([PHOTOS_DIR / "coffee.jpg"])
    expect(page.locator("#upload-problem")).to_contain_text("as the server asked")
    expect(page.locator("#upload-problem")).to_contain_text("too much work is queued")
    wait_followed(page)
    wait_loaded(heatmap(page, "coffee.jpg"))
    assert len(posts) == 2 and posts[1] - posts[0] >= 2.9, posts  # not before Retry-After


def test_a_new_batch_starts_from_a_clean_status(system, page):
    page.goto(f"{system.api_url}/")
    first = upload(page, [PHOTOS_DIR / "coffee.jpg"])
    wait_done(page)
    held: list[Route] = []
    status = re.compile(r"/v1/jobs/[0-9a-f]{32}$")

    def hold_new(route: Route) -> None:
        if first not in route.request.url:
            held.append(route)
        else:
            route.continue_()

    page.route(status, hold_new)
    second = upload(page, [PHOTOS_DIR / "chelsea.jpg"], before=first)
    while not held:
        page.wait_for_timeout(50)
    shows_batch(page, second)  # its first status has not come back yet: nothing is claimed
    expect(page.locator("#job-state")).to_have_text("Loading…")
    expect(page.locator("#job-counts")).not_to_contain_text("done")
    assert page.locator("#job-progress").evaluate("bar => bar.value") == 0
    expect(card(page, "coffee.jpg")).to_have_count(0)
    for route in held:
        route.continue_()
    page.unroute(status)
    wait_done(page)
    wait_loaded(heatmap(page, "chelsea.jpg"))


def test_phone_targets_wording_pagers_and_swipes(system, browser, tmp_path):
    with phone_tab(browser) as page:
        page.goto(f"{system.api_url}/")
        expect(page.get_by_text("Choose photos from your library")).to_be_visible()
        expect(page.get_by_text("Drop photos")).to_be_hidden()
        assert not small_targets(page), small_targets(page)
        screenshot(page, "landing-390.png", docs=True)

        upload(page, photo_files(tmp_path, 13))
        wait_done(page)
        wait_loaded(heatmap(page, "photo-011.jpg"))
        bottom = page.get_by_role("navigation", name="Result pages, bottom")
        expect(bottom).to_be_visible()
        expect(bottom).to_contain_text("Items 1–12 of 13")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert not small_targets(page), small_targets(page)
        page.locator("#job-section").evaluate("section => section.scrollIntoView()")
        screenshot(page, "batch-390.png", docs=True)
        bottom.get_by_role("button", name="Next").click()
        expect(bottom).to_contain_text("Items 13–13 of 13")
        bottom.get_by_role("button", name="Previous").click()
        wait_loaded(heatmap(page, "photo-000.jpg"))

        card(page, "photo-000.jpg").get_by_role("button", name="Enlarge photo-000.jpg").tap()
        title = viewer(page).locator(".viewer-title")
        expect(title).to_have_text("photo-000.jpg")
        wait_loaded(viewer(page).get_by_role("img", name="Depth heatmap of photo-000.jpg"))
        swipe(page, viewer(page).locator(".viewer-stage .frame"), -200)  # a finger, to the left
        expect(title).to_have_text("photo-001.jpg")
        swipe(page, viewer(page).locator(".viewer-stage .frame"), 200)
        expect(title).to_have_text("photo-000.jpg")
        wait_loaded(viewer(page).get_by_role("img", name="Photo photo-000.jpg"))
        assert not small_targets(page), small_targets(page)
        screenshot(page, "large-view-390.png", docs=True)
        viewer(page).get_by_role("button", name="3D").click()  # a tap right after the CDP
        # swipes is now and then taken as part of their gesture; touch is what the swipes test
        expect(viewer(page).locator("canvas")).to_have_attribute("data-renderer",
                                                                 re.compile("webgl|2d"))
        page.wait_for_timeout(300)
        screenshot(page, "3d-390.png", docs=True)


def test_a_page_of_twelve_12_megapixel_results_transfers_under_3_mb(system, browser, tmp_path):
    big = cv2.imread(str(PHOTOS_DIR / "large_24mp.jpg"))
    files = []
    for i in range(12):  # twelve different 12 MP photos
        crop = big[i * 40:, i * 60:] if i % 2 else big[:-i * 40 or None, ::-1]
        files.append(("file", (f"big-{i:02d}.jpg", jpeg(cv2.resize(crop, TWELVE_MP)),
                               "image/jpeg")))
    job = requests.post(f"{system.api_url}/v1/jobs", files=files, timeout=300).json()
    poll(lambda: requests.get(f"{system.api_url}/v1/jobs/{job['id']}", timeout=10).json(),
         lambda status: status["pending"] == 0, timeout=300)

    with tab(browser) as page:
        responses: list[Response] = []
        page.on("response", lambda response: responses.append(response))
        page.goto(f"{system.api_url}/#job={job['id']}")
        for i in range(12):
            wait_loaded(heatmap(page, f"big-{i:02d}.jpg"))
            wait_loaded(card(page, f"big-{i:02d}.jpg").get_by_role("img",
                                                                   name=f"Photo big-{i:02d}.jpg"))
        page.wait_for_load_state("networkidle")
        sizes = [response.request.sizes() for response in responses]
        total = sum(size["responseBodySize"] + size["responseHeadersSize"] for size in sizes)
        print(f"a page of twelve 12 MP results: {len(sizes)} responses, {total:,} bytes")
        assert total < PAGE_BUDGET, total


def test_300_photo_batch_progress_updates_live(system, page, tmp_path):
    paths = photo_files(tmp_path, BATCH)
    page.goto(f"{system.api_url}/")
    page.evaluate("window.sameDocument = true")
    page.get_by_label("Photos or archives").set_input_files(paths)

    values = progress_values(page, BATCH)
    assert values == sorted(values), values
    assert len({v for v in values if 0 < v < BATCH}) >= 2, values
    expect(page.locator("#job-counts")).to_contain_text(
        f"{BATCH} of {BATCH} done · {BATCH} succeeded · 0 failed")
    wait_done(page)
    expect(page.locator("#job-live")).to_have_text(f"Done: {BATCH} of {BATCH} items done.")
    assert page.evaluate("window.sameDocument") is True  # never reloaded

    pager = page.get_by_role("navigation", name="Result pages", exact=True)
    expect(pager).to_contain_text(f"Items 1–12 of {BATCH}")
    pager.get_by_role("button", name="Next").click()
    expect(pager).to_contain_text(f"Items 13–24 of {BATCH}")
    wait_loaded(heatmap(page, "photo-012.jpg"))
    screenshot(page, "batch-300.png", full_page=True)


def test_api_key_prompt_then_the_page_works(keyed_api, page, requested):
    page.goto(f"{keyed_api.api_url}/")
    expect(page.get_by_text("This server needs an API key")).to_be_visible()
    expect(page.get_by_label("Photos or archives")).to_be_hidden()
    expect(page.locator("#job-section")).to_be_hidden()
    assert not [url for url in requested if "/v1/" in url]  # no data without a key
    screenshot(page, "api-key-prompt.png")

    key = page.get_by_role("textbox", name="API key")
    key.fill("not-the-key")
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#key-problem")).to_contain_text("The server did not accept this API key")
    expect(page.get_by_label("Photos or archives")).to_be_hidden()
    key.fill(API_KEY)
    key.press("Enter")
    expect(page.get_by_label("Photos or archives")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('depthfleet.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0

    upload(page, [PHOTOS_DIR / "coins_gray.jpg"])
    wait_loaded(heatmap(page, "coins_gray.jpg"))
    page.reload()  # the tab keeps its key and follows the batch named in the address
    wait_loaded(heatmap(page, "coins_gray.jpg"))
    wait_loaded(card(page, "coins_gray.jpg").get_by_role("img", name="Photo coins_gray.jpg"))
    expect(page.locator("#batch-list a")).to_have_count(1)  # this key's batches only

    # A link opened in a new tab (no bearer header there) still gets the file, by its name.
    link = card(page, "coins_gray.jpg").get_by_role("link", name="16-bit depth PNG")
    href = link.get_attribute("href") or ""
    response = page.context.request.get(href)
    assert response.status == 200, (response.status, response.text()[:200])
    assert "coins_gray.depth.png" in response.headers.get("content-disposition", "")
    zip_href = page.get_by_role("link", name="Download all (zip)").get_attribute("href") or ""
    response = page.context.request.get(zip_href)
    assert response.status == 200, (response.status, response.text()[:200])
    assert zipfile.ZipFile(io.BytesIO(response.body())).namelist()

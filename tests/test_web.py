"""The web page in a real browser: Debian's Chromium, driven by Playwright, against the real API
process, two Celery worker processes, Redis and an S3 server. Screenshots of what the browser
showed go to ``test-artifacts/web/``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest
import requests
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from conftest import BAD_DIR, PHOTOS_DIR, REPO
from depthfleet.shared.artifacts import PREVIEW_SIDE, raw_depth, render_full_size
from depthfleet.shared.imaging.encode import decode_pfm
from support import System, running, s3_system, tiny_jpeg

pytestmark = pytest.mark.integration

SCREENSHOTS = REPO / "test-artifacts" / "web"
CHROMIUM = "/usr/bin/chromium"  # Debian's; never a downloaded browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
API_KEY = "key-web-4d1f"
PHOTOS = {"chelsea.jpg": (451, 300), "coffee.jpg": (600, 400)}  # name: (width, height)
BAD = "truncated_40pct.jpg"
BATCH = 300
WAIT_MS = 60_000


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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser) -> Iterator[Page]:
    """A fresh tab with its own sessionStorage."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


@pytest.fixture()
def requested(page) -> list[str]:
    """Every URL the tab asks for."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


def card(page: Page, name: str) -> Locator:
    return page.locator("#items .card").filter(
        has=page.get_by_role("heading", name=name, exact=True))


def wait_loaded(image: Locator) -> None:
    """The <img> is decoded, not merely present."""
    image.page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                 arg=image.element_handle(), timeout=WAIT_MS)


def natural_size(image: Locator) -> tuple[int, int]:
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    return width, height


def artifacts_fetched(urls: list[str]) -> list[str]:
    """The artifact file names among ``urls`` (``…/items/<i>/<filename>``), in order."""
    paths = (urlparse(url).path for url in urls)
    return [m.group(1) for m in map(re.compile(r"/items/\d+/([^/]+)$").search, paths) if m]


def download(page: Page, link: Locator) -> tuple[str, bytes]:
    with page.expect_download() as info:
        link.click()
    return info.value.suggested_filename, Path(info.value.path()).read_bytes()


def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / name, full_page=full_page)


def followed_job(page: Page) -> str:
    return page.evaluate("location.hash").removeprefix("#job=")


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


def test_photos_show_beside_heatmaps_with_reasons_and_downloads(system, page, requested):
    page.goto(f"{system.api_url}/")
    page.get_by_label("Photos or archives").set_input_files(
        [PHOTOS_DIR / name for name in PHOTOS] + [BAD_DIR / BAD])
    for name in PHOTOS:
        for image in (f"Depth heatmap of {name}", f"Photo {name}"):
            shown = card(page, name).get_by_role("img", name=image)
            wait_loaded(shown)
            assert max(natural_size(shown)) <= PREVIEW_SIDE, (image, natural_size(shown))
    grid = artifacts_fetched(requested)  # the grid shows the compact previews, nothing full size
    assert sorted(grid) == sorted(["heatmap_preview.jpg", "thumbnail.jpg"] * len(PHOTOS)), grid

    items = requests.get(f"{system.api_url}/v1/jobs/{followed_job(page)}/items", timeout=10)
    bad_item = next(item for item in items.json()["items"] if item["name"] == BAD)
    for shown in (card(page, BAD), page.locator("#failure-list")):
        expect(shown).to_contain_text("The image is damaged or incomplete")
        expect(shown).to_contain_text(bad_item["error"]["message"])
    expect(page.locator("#job-state")).to_have_text("Done; some items failed")
    expect(page.locator("#job-counts")).to_contain_text("3 of 3 done · 2 succeeded · 1 failed")
    expect(page.get_by_role("button", name="Retry failed items")).to_be_hidden()  # bad input

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
    heatmap = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert filename == "chelsea.heatmap.png" and heatmap.shape == (height, width, 3)
    raw_link = chelsea.get_by_role("link", name="Network output, float32 TIFF")
    filename, data = download(page, raw_link)
    assert filename == "chelsea.depth_raw.tiff"  # and the full-size map is rebuilt from it exactly
    assert render_full_size(raw_depth(data, width, height), ["depth_png"])["depth_png"] == depth_png
    screenshot(page, "photos.png")

    page.get_by_role("button", name="View larger heatmap of coffee.jpg").click()
    larger = page.get_by_role("dialog", name="Heatmap of coffee.jpg").get_by_role("img")
    wait_loaded(larger)
    assert natural_size(larger) == PHOTOS["coffee.jpg"]  # the screen is larger than the photo
    assert any("/heatmap.png?max_side=" in url for url in requested), requested
    screenshot(page, "larger-heatmap.png", full_page=False)  # the modal covers the viewport
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)

    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "photos-phone.png")
    foreign = [url for url in requested
               if not url.startswith((f"{system.api_url}/", "blob:", "data:"))]
    assert not foreign, foreign  # nothing from another origin: the page works offline


def test_300_photo_batch_progress_updates_live(system, page, tmp_path):
    paths = [tmp_path / f"photo-{i:03d}.jpg" for i in range(BATCH)]
    for seed, path in enumerate(paths):
        path.write_bytes(tiny_jpeg(seed))
    page.goto(f"{system.api_url}/")
    page.evaluate("window.sameDocument = true")
    page.get_by_label("Photos or archives").set_input_files(paths)

    values = progress_values(page, BATCH)
    assert values == sorted(values), values
    assert len({v for v in values if 0 < v < BATCH}) >= 2, values
    expect(page.locator("#job-counts")).to_contain_text(
        f"{BATCH} of {BATCH} done · {BATCH} succeeded · 0 failed")
    expect(page.locator("#job-state")).to_have_text("Done")
    expect(page.locator("#job-live")).to_have_text(f"Done: {BATCH} of {BATCH} items done.")
    assert page.evaluate("window.sameDocument") is True  # never reloaded

    expect(page.locator("#page-info")).to_have_text(f"Items 1–12 of {BATCH}")
    page.get_by_role("button", name="Next").click()
    expect(page.locator("#page-info")).to_have_text(f"Items 13–24 of {BATCH}")
    wait_loaded(card(page, "photo-012.jpg").get_by_role("img", name="Depth heatmap of photo-012.jpg"))
    screenshot(page, "batch-300.png")


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

    page.get_by_label("Photos or archives").set_input_files([PHOTOS_DIR / "coins_gray.jpg"])
    heatmap = "Depth heatmap of coins_gray.jpg"
    wait_loaded(card(page, "coins_gray.jpg").get_by_role("img", name=heatmap))
    page.reload()  # the tab keeps its key and follows the batch named in the address
    wait_loaded(card(page, "coins_gray.jpg").get_by_role("img", name=heatmap))
    # The local file is gone with the reload; the photo is the thumbnail the worker stored.
    wait_loaded(card(page, "coins_gray.jpg").get_by_role("img", name="Photo coins_gray.jpg"))

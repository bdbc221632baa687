"""Driving the web page in Debian's Chromium with Playwright: shared by the browser tests.

Screenshots go to ``test-artifacts/web/``; the few that document the page (``docs=True``) go
to ``docs/screenshots/`` as well, so the README shows what the suite's own run saw.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from conftest import REPO

ARTIFACTS = REPO / "test-artifacts" / "web"
DOCS = REPO / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"  # Debian's; never a downloaded browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
WAIT_MS = 60_000
EXPECT_MS = 20_000  # a batch's "Done" on a loaded 2-core machine, not 5 s

expect.set_options(timeout=EXPECT_MS)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def tab(browser: Browser, **options) -> Iterator[Page]:
    """A fresh tab with its own sessionStorage (``options`` go to the browser context)."""
    context = browser.new_context(accept_downloads=True, **{"viewport": DESKTOP, **options})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        yield page
    finally:
        context.close()


@contextmanager
def phone_tab(browser: Browser, **options) -> Iterator[Page]:
    """A touch phone's tab: 390 x 844, coarse pointer, no hover."""
    with tab(browser, viewport=PHONE, has_touch=True, is_mobile=True, device_scale_factor=2,
             **options) as page:
        yield page


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


def followed_job(page: Page) -> str:
    return page.evaluate("location.hash").removeprefix("#job=")


def wait_followed(page: Page, before: str = "", timeout: float = 60) -> str:
    """The batch the address names once it names one other than ``before``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = followed_job(page)
        if job and job != before:
            return job
        page.wait_for_timeout(100)
    raise AssertionError(f"the address never named a new batch (still {before!r})")


def screenshot(page: Page, name: str, full_page: bool = False, docs: bool = False) -> None:
    for folder in (ARTIFACTS, DOCS) if docs else (ARTIFACTS,):
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=folder / name, full_page=full_page)


def drop_files(page: Page, selector: str, files: dict[str, bytes]) -> None:
    """Drag ``files`` onto the element ``selector`` and drop them there, as a user would."""
    payload = {name: base64.b64encode(data).decode() for name, data in files.items()}
    page.evaluate("""([selector, files]) => {
        const transfer = new DataTransfer();
        for (const [name, data] of Object.entries(files)) {
          const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
          transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
        }
        const target = document.querySelector(selector);
        for (const type of ["dragenter", "dragover", "drop"]) {
          target.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true,
                                                     dataTransfer: transfer }));
        }
    }""", [selector, payload])


def small_targets(page: Page) -> list[str]:
    """Visible links, buttons and inputs smaller than 24 x 24 CSS px (WCAG 2.2, 2.5.8)."""
    return page.evaluate("""() => [...document.querySelectorAll(
        "a[href], button, input, select, summary, [tabindex]")].filter((el) => {
          const box = el.getBoundingClientRect();
          const style = getComputedStyle(el);
          if (!box.width || style.visibility === "hidden" || el.closest(".visually-hidden")) return false;
          return box.width < 24 || box.height < 24;
        }).map((el) => `${el.tagName} ${el.getAttribute("aria-label") || el.textContent.trim()
                        .slice(0, 40)}: ${Math.round(el.getBoundingClientRect().width)} x ` +
                        `${Math.round(el.getBoundingClientRect().height)}`)""")


def swipe(page: Page, locator: Locator, dx: float) -> None:
    """A one-finger horizontal swipe across ``locator`` (real touch events, through CDP)."""
    box = locator.bounding_box()
    assert box, "nothing to swipe on"
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    session = page.context.new_cdp_session(page)
    steps = [(x + dx * i / 8, y) for i in range(9)]
    session.send("Input.dispatchTouchEvent",
                 {"type": "touchStart", "touchPoints": [{"x": steps[0][0], "y": y}]})
    for px, py in steps[1:]:
        session.send("Input.dispatchTouchEvent",
                     {"type": "touchMove", "touchPoints": [{"x": px, "y": py}]})
    session.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    session.detach()

"""The web page telling the truth while nothing can happen: an API with no worker running (its
own Redis database, so no other module's workers take its tasks), then one worker started.

A batch cancelled before any worker took it shows as cut short, not done; a batch nobody works
on says so after a while; a reload mid-batch keeps following it; and once a worker starts it
finishes on the same page.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from conftest import PHOTOS_DIR
from support import System, running, s3_system
from webpage import card, wait_followed, wait_loaded

pytestmark = pytest.mark.integration

STALL_WAIT_MS = 30_000  # the page speaks up after 15 s without change


@pytest.fixture(scope="module")
def idle(tmp_path_factory, redis_db_url, s3_server, checkpoint_path) -> Iterator[System]:
    """The API alone: tasks queue up in Redis and nobody takes them, until a test starts one."""
    system = s3_system(tmp_path_factory.mktemp("web-idle"), redis_db_url, s3_server,
                       checkpoint_path, "depthfleet-web-idle")
    with running(system, workers=()):
        yield system


def progress(page: Page) -> tuple[float, float]:
    value, maximum = page.locator("#job-progress").evaluate("bar => [bar.value, bar.max]")
    return value, maximum


def test_without_workers_the_page_says_so_and_cancelled_is_not_done(idle, page):
    page.on("dialog", lambda dialog: dialog.accept())  # "Cancel every item…?"
    page.goto(f"{idle.api_url}/")
    photos = [PHOTOS_DIR / name for name in ("chelsea.jpg", "coffee.jpg", "coins_gray.jpg")]
    page.get_by_label("Photos or archives").set_input_files(photos)
    cancelled = wait_followed(page)
    expect(page.locator("#job-state")).to_have_text("Queued: waiting for a worker")
    page.get_by_role("button", name="Cancel the rest").click()
    expect(page.locator("#job-state")).to_have_text("Cancelled")
    expect(page.locator("#job-counts")).to_contain_text("0 of 3 done · 0 succeeded · 0 failed")
    expect(page.locator("#job-counts")).to_contain_text("3 cancelled")
    assert progress(page) == (0, 3)  # the bar does not fill up for work never done
    expect(page.locator("#job-progress")).to_have_attribute(
        "aria-valuetext", "0 of 3 items done, 3 cancelled")
    expect(page.get_by_role("link", name="Download all (zip)")).to_be_hidden()

    page.get_by_label("Photos or archives").set_input_files(photos[:2])
    waiting = wait_followed(page, cancelled)
    expect(page.locator("#job-state")).to_have_text("Queued: waiting for a worker")
    stall = page.locator("#job-stall")
    expect(stall).to_be_hidden()
    expect(stall).to_contain_text("none may be running", timeout=STALL_WAIT_MS)

    page.reload()  # mid-batch: the same batch, still honest about it
    expect(page.locator("#job-id")).to_have_text(f"Batch {waiting}")
    expect(page.locator("#job-state")).to_have_text("Queued: waiting for a worker")
    expect(stall).to_contain_text("none may be running", timeout=STALL_WAIT_MS)
    idle.start_worker()
    expect(page.locator("#job-state")).to_have_text("Done", timeout=120_000)
    expect(stall).to_be_hidden()
    for photo in photos[:2]:
        wait_loaded(card(page, photo.name).get_by_role("img", name=f"Photo {photo.name}"))
    assert progress(page) == (2, 2)

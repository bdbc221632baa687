"""The API on the services host is SIGKILLed and restarted while a client uploads an archive.

The client (``depthfleet.client.Client``) sends every job creation with an Idempotency-Key
and retries a request cut off mid-body once the API answers again; the key makes the retry,
and any later repeat of the request, yield the one job. The upload goes over a slow link
(``Network.throttle``) so that the restart lands inside the body, not before or after it.
"""

from __future__ import annotations

import threading
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from faults.faultkit import assert_each_item_once, restart_api, wait_finished
from multihost.fleet import assert_matches_predict

pytestmark = pytest.mark.multihost

UPLOAD_RATE = "2mbit"  # the batch's zip (~0.8 MB) takes ~3 s to send
RESTART_AFTER = 1.0  # seconds into the upload


def zipped(photos: list[Path], out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for photo in photos:
            archive.write(photo, photo.name)
    return out


def test_api_restarted_mid_archive_upload_yields_one_job(fleet_factory, photos, predicted,
                                                         tmp_path):
    fleet = fleet_factory()
    archive = zipped(photos, tmp_path / "photos.zip")
    fleet.network.throttle("services", int(fleet.system.api_url.rsplit(":", 1)[1]), UPLOAD_RATE)
    client, key = fleet.client(), uuid.uuid4().hex
    answer: dict = {}
    upload = threading.Thread(
        target=lambda: answer.update(client.submit_files([archive], idempotency_key=key)))
    started = time.monotonic()
    upload.start()
    time.sleep(RESTART_AFTER)
    assert upload.is_alive(), "the upload must still be sending when the API dies"
    restart_api(fleet.system, down_seconds=1)
    upload.join(timeout=180)
    assert not upload.is_alive() and "id" in answer, answer
    job_id = answer["id"]
    assert "POST /v1/jobs" in fleet.system.log("api.log")

    again = fleet.client().submit_files([archive], idempotency_key=key)  # an answer lost
    assert again["id"] == job_id
    assert fleet.store.tenant_jobs("local") == [job_id]
    assert len(fleet.objects("t/local/staging/")) == 1, "one stored copy of the archive"
    wait_finished(client, job_id)
    stats = assert_each_item_once(fleet, client, job_id, len(photos))
    assert_matches_predict(fleet, job_id, predicted)
    print(f"\nAPI restarted {RESTART_AFTER:.0f}s into the upload: one job, accepted "
          f"{time.monotonic() - started:.1f}s after the first try began; {stats}")

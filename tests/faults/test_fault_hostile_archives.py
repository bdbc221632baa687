"""Archives as real users send them: legacy names, damaged members, gzip without a tar.

Through the real fleet (API, a 2-process worker, Redis, an S3 server), uploaded and named
by ``keys``: every entry ends (good ones succeed under a readable name, damaged ones fail
alone with their reason), the job ends, and the global and per-tenant pending counts drain to
zero, so nobody is left at ``429``. Inputs come from ``tests/hostile.py``'s generators.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import requests

from faults.faultkit import all_items, wait_finished
from hostile import WORDS, damaged_zip, gzip_not_tar, named_tar, named_zip, representable
from support import tiny_jpeg

pytestmark = pytest.mark.faults

POOL = 2
TENANT = "local"
# Each legacy encoding with the words it can write; the zip ones have no UTF-8 flag.
ZIP_ENCODINGS = ("cp437", "cp1252", "cp932")
TAR_ENCODINGS = ("latin-1", "cp932")


def _words(encoding: str) -> list[str]:
    return [w for w in WORDS if representable(w, encoding)]


def _legacy_archives() -> list[tuple[str, bytes, dict[str, bytes]]]:
    """(file name, bytes, {expected item name: entry bytes}) for every class of old names."""
    archives = []
    for encoding in ZIP_ENCODINGS:
        data, expected = named_zip(_words(encoding), encoding)
        archives.append((f"names-{encoding}.zip", data, expected))
    data, expected = named_zip(["Müller.jpg", "写真.jpg"], "utf-8", unicode_extra=True)
    archives.append(("names-unicode-extra.zip", data, expected))
    for encoding in TAR_ENCODINGS:
        for gz in (False, True):
            data, expected = named_tar(_words(encoding), encoding, gz=gz)
            archives.append((f"names-{encoding}.tar{'.gz' if gz else ''}", data, expected))
    return archives


def _post_files(api: str, files: list[tuple[str, bytes]]) -> str:
    response = requests.post(f"{api}/v1/jobs", files=[("file", f) for f in files], timeout=120)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _post_json(api: str, body: dict) -> str:
    # json.dumps writes a lone surrogate as the escape "\udcfc", which JSON allows.
    response = requests.post(f"{api}/v1/jobs", data=json.dumps(body), timeout=120,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _finished_items(deployment, job_id: str) -> dict[str, dict]:
    client = deployment.client()
    status = wait_finished(client, job_id)
    assert status["ingesting"] is False and status["status"] in ("succeeded", "partial",
                                                                  "failed"), status
    items = all_items(client, job_id)
    assert len(items) == status["total"]
    return {item["name"]: item for item in items}


def _assert_drained(deployment) -> None:
    assert deployment.store.pending_items() == 0
    assert deployment.store.pending_items(TENANT) == 0


def _put_in_bucket(deployment, name: str, data: bytes) -> str:
    key = f"df/t/{TENANT}/incoming/{name}"
    deployment.s3_direct.put_object(Bucket=deployment.bucket, Key=key, Body=data)
    return f"s3://{deployment.bucket}/{key}"


def test_legacy_names_succeed_under_readable_names(deploy):
    deployment = deploy()
    deployment.start(POOL)
    api = deployment.system.api_url
    for filename, data, expected in _legacy_archives():
        for how in ("upload", "keys"):
            if how == "upload":
                job_id, prefix = _post_files(api, [(filename, data)]), ""
            else:
                url = _put_in_bucket(deployment, filename, data)
                job_id, prefix = _post_json(api, {"keys": [url]}), f"{filename}/"
            items = _finished_items(deployment, job_id)
            assert set(items) == {prefix + name for name in expected}, (filename, how, items)
            assert all(item["status"] == "succeeded" for item in items.values()), items
            if "unicode-extra" not in filename:  # that one's real name is UTF-8
                assert all(item["raw_name"] for name, item in items.items()
                           if not name.isascii()), (filename, items)
    _assert_drained(deployment)


def test_names_with_lone_surrogates_end_and_can_be_cancelled(deploy):
    deployment = deploy()
    deployment.start(POOL)
    api = deployment.system.api_url
    photo = tiny_jpeg(11)
    digest = hashlib.sha256(photo).hexdigest()
    assert requests.put(f"{api}/v1/uploads/{digest}", data=photo, timeout=30).status_code == 201
    names = ["M\udcfcller.jpg", "\udce5\udc86\udc99\udce7\udc9c\udc9f.jpg", "lone \ud800 high.jpg",
             "plain.jpg"]
    job_id = _post_json(api, {"uploads": [{"name": n, "sha256": digest} for n in names]})
    items = _finished_items(deployment, job_id)
    assert all(item["status"] == "succeeded" for item in items.values()), items
    assert {"Müller.jpg", "写真.jpg", "lone \ufffd high.jpg", "plain.jpg"} == set(items)
    # DELETE and retry answer on such jobs (they used to fail on the records with 503).
    for method, path in (("DELETE", ""), ("POST", "/retry")):
        response = requests.request(method, f"{api}/v1/jobs/{job_id}{path}", timeout=30)
        assert response.status_code in (200, 202), response.text
    _assert_drained(deployment)


def test_damaged_archives_keep_their_good_entries(deploy):
    deployment = deploy()
    deployment.start(POOL)
    api = deployment.system.api_url
    data, expected = damaged_zip()
    for how in ("upload", "keys"):
        if how == "upload":
            job_id, prefix = _post_files(api, [("damaged.zip", data)]), ""
        else:
            url = _put_in_bucket(deployment, "damaged.zip", data)
            job_id, prefix = _post_json(api, {"keys": [url]}), "damaged.zip/"
        items = _finished_items(deployment, job_id)
        for name, outcome in expected.items():
            item = items[prefix + name]
            if isinstance(outcome, bytes):
                assert item["status"] == "succeeded", (name, item)
                assert item["sha256"] == hashlib.sha256(outcome).hexdigest()
            else:
                assert (item["status"], item["error"]["code"]) == ("failed", outcome), (name, item)
                assert item["error"]["message"]

    not_tar = _finished_items(deployment, _post_files(api, [("notes.tar.gz", gzip_not_tar()),
                                                            ("ok.jpg", tiny_jpeg(3))]))
    assert not_tar["ok.jpg"]["status"] == "succeeded"
    failed = not_tar["notes.tar.gz"]  # no archive at all, whatever its name says
    assert failed["status"] == "failed" and failed["error"]["code"] == "not_an_image", failed
    url = _put_in_bucket(deployment, "notes.tar.gz", gzip_not_tar())  # named in storage
    (by_key,) = _finished_items(deployment, _post_json(api, {"keys": [url]})).values()
    assert by_key["error"]["code"] == "not_an_image", by_key
    _assert_drained(deployment)

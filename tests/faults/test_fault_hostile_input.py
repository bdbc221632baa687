"""Every file of testdata/bad/, alone, in a batch and inside zip/tar/tar.gz archives built here.

Each gets the contract's outcome (a 4xx with its code alone, a failed item with its reason in
a batch), nothing answers 5xx, no worker process dies or is replaced, and the good photos
beside the bad ones succeed. Archives also carry entries that try to escape (``../``, absolute
paths, links): they become failed items and nothing is written outside storage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from conftest import BAD_DIR, allowed_outcomes, load_manifest, outcome_of
from faults.faultkit import all_items, wait_finished, wait_for_pool, write_images
from support import build_archive

pytestmark = pytest.mark.faults

POOL = 2
ESCAPES = {"../escape.jpg": "unsafe_path", "/etc/evil.jpg": "unsafe_path",
           "link.jpg": "unsupported_entry"}


def _bad_entries() -> list[dict]:
    return load_manifest(BAD_DIR)


def _archive_members(good: list[Path]) -> dict[str, bytes]:
    members = {f"good/{p.name}": p.read_bytes() for p in good}
    members.update({f"bad/{e['file']}": (BAD_DIR / e["file"]).read_bytes() for e in _bad_entries()})
    members.update({name: good[0].read_bytes() for name in ESCAPES if name != "link.jpg"})
    return members


class Api:
    """Posts jobs and remembers every status code it saw (none may be a 5xx)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []

    def post(self, files: list[tuple[str, bytes]]) -> requests.Response:
        response = requests.post(f"{self.url}/v1/jobs", timeout=120,
                                 files=[("file", (name, data)) for name, data in files])
        self.statuses.append(response.status_code)
        return response


def _outcomes_by_name(deployment, job_id: str) -> dict[str, str]:
    client = deployment.client()
    wait_finished(client, job_id)
    return {item["name"]: outcome_of(item) for item in all_items(client, job_id)}


def _check_bad(outcomes: dict[str, str], prefix: str = "") -> None:
    """Every bad file's item has an allowed outcome; an archive sniffed by content may unpack."""
    for entry in _bad_entries():
        name = prefix + entry["file"]
        if name not in outcomes and entry.get("format") == "ZIP":
            unpacked = [n for n in outcomes if n.endswith("photo.jpg")]
            assert unpacked and all(outcomes[n] == "accept" for n in unpacked), outcomes
            assert "accept" in allowed_outcomes(entry)
            continue
        assert outcomes[name] in allowed_outcomes(entry), (name, outcomes[name])


def _check_good(outcomes: dict[str, str], good: list[Path], prefix: str = "") -> None:
    assert all(outcomes[prefix + p.name] == "accept" for p in good), outcomes


def _entry_prefix(outcomes: dict[str, str], entry: str) -> str:
    """What item names put before an archive entry's path (e.g. the archive's own name)."""
    return next(name for name in outcomes if name.endswith(entry))[:-len(entry)]


def test_bad_files_alone_in_batches_and_archives(deploy, tmp_path):
    deployment = deploy(DEPTHFLEET_ITEMS_PER_TASK="2")
    worker = deployment.system.start_worker(concurrency=POOL)
    deployment.system.start_api()
    pids = (worker.pid, tuple(wait_for_pool(worker, POOL)), deployment.system.api.pid)
    api = Api(deployment.system.api_url)
    good = write_images(tmp_path / "good", 3)

    for entry in _bad_entries():  # alone
        response = api.post([(entry["file"], (BAD_DIR / entry["file"]).read_bytes())])
        if response.status_code == 202:
            outcomes = _outcomes_by_name(deployment, response.json()["id"])
            assert set(outcomes.values()) <= allowed_outcomes(entry), (entry["file"], outcomes)
        else:
            assert f"reject: {response.json()['error']['code']}" in allowed_outcomes(entry), \
                (entry["file"], response.status_code, response.text)

    batch = [(p.name, p.read_bytes()) for p in good] + \
        [(e["file"], (BAD_DIR / e["file"]).read_bytes()) for e in _bad_entries()]
    outcomes = _outcomes_by_name(deployment, api.post(batch).json()["id"])
    _check_good(outcomes, good)
    _check_bad(outcomes)

    members = _archive_members(good)
    for kind in ("zip", "tar", "tar.gz"):
        name, data = f"a.{kind}", build_archive(members, kind)
        response = api.post([(name, data), (good[0].name, good[0].read_bytes())])
        assert response.status_code == 202, (name, response.text)
        outcomes = _outcomes_by_name(deployment, response.json()["id"])
        prefix = _entry_prefix(outcomes, f"good/{good[0].name}")
        _check_good(outcomes, good, prefix + "good/")
        _check_bad(outcomes, prefix + "bad/")
        for escape, code in ESCAPES.items():
            assert outcomes[prefix + escape] == f"reject: {code}", (name, escape, outcomes)

    assert all(status < 500 for status in api.statuses), api.statuses
    assert worker.poll() is None and deployment.system.api.poll() is None
    assert pids == (worker.pid, tuple(wait_for_pool(worker, POOL)), deployment.system.api.pid)
    logged = [json.loads(line) for line in deployment.system.log("api.log").splitlines()
              if line.startswith("{")]
    assert logged and not [line for line in logged if line.get("status", 0) >= 500]

"""``depthfleet.client.Client`` against a real fleet: API process, a Celery worker process, the
machine's Redis and an S3 server process. What a notebook does: submit paths and bytes (and
bucket keys), wait with progress, iterate items, download results into a folder.

Answers are also checked against the schemas of the served OpenAPI document.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import boto3
import pytest

from conftest import BAD_DIR
from depthfleet.client import ApiError, Client, Job, NothingAccepted
from depthfleet.outputs import output_stems
from depthfleet.shared.artifacts import ARTIFACTS, FULL_SIZE
from support import openapi_problems, running, s3_system, tiny_jpeg

pytestmark = pytest.mark.integration

BUCKET = "depthfleet-client"
KEY = "key-notebook-1"
WAIT = 600


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, redis_db_url, s3_server, checkpoint_path):
    system = s3_system(tmp_path_factory.mktemp("fleet"), redis_db_url, s3_server,
                       checkpoint_path, BUCKET, DEPTHFLEET_API_KEYS=f"nb:{KEY}",
                       DEPTHFLEET_TENANT_SOURCES=f"nb=s3://{BUCKET}/photos/")
    with running(system, workers=(1,)):
        yield system


@pytest.fixture()
def client(fleet):
    with Client(fleet.api_url, api_key=KEY, timeout=60) as client:
        yield client


def photo_folder(root: Path) -> Path:
    """Three small photos, one in a subfolder, and an empty file the server refuses."""
    (root / "sub").mkdir(parents=True)
    for i, rel in enumerate(("a.jpg", "b.jpg", "sub/c.jpg")):
        (root / rel).write_bytes(tiny_jpeg(100 + i))
    (root / "empty.jpg").write_bytes((BAD_DIR / "empty.jpg").read_bytes())
    return root


def test_submit_paths_and_bytes_wait_iterate_and_download(client, tmp_path):
    folder = photo_folder(tmp_path / "photos")
    in_memory = [(f"mem/{i}.jpg", tiny_jpeg(200 + i)) for i in range(3)]
    job = client.submit([folder, *in_memory])
    assert isinstance(job, Job) and openapi_problems(job.info, "Job") == []
    assert [(name, e.status, e.code) for name, e in job.refused] == [("empty.jpg", 400,
                                                                      "empty_file")]
    names = ["a.jpg", "b.jpg", "sub/c.jpg", "mem/0.jpg", "mem/1.jpg", "mem/2.jpg"]
    assert job.info["total"] == len(names)

    seen: list[int] = []
    final = job.wait(interval=0.05, timeout=WAIT,
                     on_update=lambda s: seen.append(s["succeeded"] + s["failed"]))
    assert final["status"] == "succeeded" and final["succeeded"] == len(names)
    assert seen == sorted(seen) and seen[0] < seen[-1] == len(names), seen
    assert openapi_problems(final, "Job") == []

    items = list(job.items())
    assert [item["name"] for item in items] == names
    assert all(item["status"] == "succeeded" for item in items)
    assert [p for item in items for p in openapi_problems(item, "Item")] == []

    out = tmp_path / "out"
    outputs = (*FULL_SIZE, "thumbnail")
    done = job.download(out, outputs=outputs)
    assert done.failed == 0 and done.folder == out and done.status["status"] == "succeeded"
    stems = output_stems(names)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in manifest) == sorted(names)
    for item in items:
        for name in outputs:
            rel = f"{stems[item['name']]}.{ARTIFACTS[name].filename}"  # the CLI's naming
            assert (out / rel).read_bytes() == client.download(item["artifacts"][name]), rel


def test_submit_bucket_keys(client, fleet):
    boto3.client("s3", endpoint_url=fleet.env["DEPTHFLEET_S3_ENDPOINT"], region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing",
                 ).put_object(Bucket=BUCKET, Key="photos/k.jpg", Body=tiny_jpeg(300))
    job = client.submit_keys([f"s3://{BUCKET}/photos/k.jpg"], max_side=32)
    final = job.wait(interval=0.1, timeout=WAIT)
    assert final["status"] == "succeeded" and final["options"]["max_side"] == 32
    [item] = job.items()
    assert item["name"] == f"s3://{BUCKET}/photos/k.jpg"
    assert (item["width"], item["height"]) == (64, 48)  # the photo's own size
    with pytest.raises(ApiError) as refused:  # outside the tenant's sources
        client.submit_keys([f"s3://{BUCKET}/elsewhere/k.jpg"])
    assert (refused.value.status, refused.value.code) == (403, "source_forbidden")


def test_errors_are_api_errors_and_nothing_accepted_makes_no_job(client, fleet):
    with pytest.raises(ApiError) as missing:
        client.job("0" * 32)
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with Client(fleet.api_url, api_key="wrong") as stranger, pytest.raises(ApiError) as denied:
        stranger.status("0" * 32)
    assert (denied.value.status, denied.value.code) == (401, "invalid_api_key")
    with pytest.raises(NothingAccepted) as nothing:
        client.submit({"empty.jpg": b""})
    assert [(name, e.code) for name, e in nothing.value.refused] == [("empty.jpg", "empty_file")]


CLI_MODULES = ("cli", "commands", "submit", "results")


@pytest.mark.parametrize("module", CLI_MODULES)
def test_the_cli_speaks_http_only_through_the_client(module):
    """No HTTP library in the modules of submit, status and fetch: their requests are the
    client's, so there is one implementation of each."""
    source = Path(__file__).parents[1] / "depthfleet" / f"{module}.py"
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(source.read_text()))
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"requests", "urllib3", "http", "urllib", "httpx"}, module

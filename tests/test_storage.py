"""Storage behaviours renders on read rely on: streaming in bounded pieces, and the cache's
expiry (a lifecycle rule merged into the bucket's own on S3; old files deleted in a folder)."""

from __future__ import annotations

import os
import time
import uuid

import boto3
import pytest

from depthfleet.shared.settings import Settings
from depthfleet.shared.storage import STREAM_CHUNK, FileStorage, ObjectMissing, open_storage


@pytest.fixture
def bucket_storage(s3_server, s3_credentials):
    bucket = f"storage-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=bucket)
    settings = Settings(storage_url=f"s3://{bucket}/root", s3_endpoint=s3_server)
    return open_storage(settings), client, bucket


def test_streams_come_in_bounded_pieces(tmp_path, bucket_storage):
    data = os.urandom(2 * STREAM_CHUNK + 123)
    for storage in (FileStorage(tmp_path), bucket_storage[0]):
        storage.put("a/b.bin", data)
        stored = storage.stream("a/b.bin")
        chunks = list(stored.chunks)
        assert stored.size == len(data) and b"".join(chunks) == data
        assert max(map(len, chunks)) <= STREAM_CHUNK
        with pytest.raises(ObjectMissing):
            storage.stream("a/none.bin")


def test_folder_expiry_deletes_only_old_files_under_the_prefix(tmp_path):
    storage = FileStorage(tmp_path)
    for key in ("cache/t/a/old.png", "cache/t/a/new.png", "t/a/results/old.tiff"):
        storage.put(key, b"x")
    old = time.time() - 8 * 86400
    for key in ("cache/t/a/old.png", "t/a/results/old.tiff"):
        os.utime(tmp_path / key, (old, old))
    storage.expire_prefix("cache/", 7)
    assert [info.key for info in storage.list("")] == ["cache/t/a/new.png", "t/a/results/old.tiff"]


def test_bucket_expiry_rule_is_merged_not_replacing_the_owners_rules(bucket_storage):
    storage, client, bucket = bucket_storage
    owners = {"ID": "owner-rule", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
              "Expiration": {"Days": 30}}
    client.put_bucket_lifecycle_configuration(Bucket=bucket,
                                              LifecycleConfiguration={"Rules": [owners]})
    storage.expire_prefix("cache/", 7)
    storage.expire_prefix("cache/", 3)  # again, changed: still one rule of ours
    rules = {rule["ID"]: rule for rule in
             client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert set(rules) == {"owner-rule", "depthfleet-expire-root/cache"}
    ours = rules["depthfleet-expire-root/cache"]
    assert ours["Filter"]["Prefix"] == "root/cache/" and ours["Expiration"]["Days"] == 3


def test_bucket_expiry_works_on_a_bucket_without_rules(bucket_storage):
    storage, client, bucket = bucket_storage
    storage.expire_prefix("cache/", 7)
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [rule["Filter"]["Prefix"] for rule in rules] == ["root/cache/"]


def test_the_reaper_expires_renders_at_most_hourly(tmp_path):
    from depthfleet.worker.reaper import Reaper

    storage = FileStorage(tmp_path)
    settings = Settings(storage_url=tmp_path.as_uri(), render_cache_days=1)
    reaper = Reaper(app=None, settings=settings)  # type: ignore[arg-type]  # no sweep needs it
    old = time.time() - 2 * 86400
    storage.put("cache/x/first.png", b"x")
    os.utime(tmp_path / "cache/x/first.png", (old, old))
    reaper.expire_renders()
    assert not storage.exists("cache/x/first.png")
    storage.put("cache/x/second.png", b"x")
    os.utime(tmp_path / "cache/x/second.png", (old, old))
    reaper.expire_renders()  # within the hour: nothing listed, nothing deleted
    assert storage.exists("cache/x/second.png")

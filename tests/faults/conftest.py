"""Fixtures of the fault suite: a whole deployment per test, each with its own Redis server.

A private ``redis-server`` per test keeps global counters (model runs, pending items, leases)
exact to assert on. Storage is the session's S3 server (moto) behind a ``TcpProxy`` that a
test can cut; listings for assertions go to moto directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
import pytest

from faults.faultkit import Deployment, RedisServer, TcpProxy, kill_all
from support import System, system_env


def _s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture()
def deploy(tmp_path: Path, s3_server: str, checkpoint_path: Path,
           model_cache: Path) -> Iterator[Callable[..., Deployment]]:
    """``deploy(**DEPTHFLEET_env)``: Redis and the S3 proxy up; the test starts API and workers."""
    with ExitStack() as cleanup:

        def make(**extra: str) -> Deployment:
            redis_server = RedisServer(tmp_path / "redis")
            cleanup.callback(redis_server.stop)
            redis_server.start()
            proxy = TcpProxy(int(s3_server.rsplit(":", 1)[1]))
            cleanup.callback(proxy.cut)
            proxy.restore()
            bucket = f"faults-{uuid.uuid4().hex[:12]}"
            direct = _s3_client(s3_server)
            direct.create_bucket(Bucket=bucket)
            env = system_env(redis_server.url, f"s3://{bucket}/df", proxy.endpoint,
                             checkpoint_path, model_cache, **extra)
            system = System(env, tmp_path / "logs")
            cleanup.callback(kill_all, system)
            return Deployment(system, redis_server, proxy, bucket, direct)

        yield make

"""Fixtures of the multi-host suite: a fleet on three hosts (network namespaces) per test.

Each test gets its own network (a switch and the hosts ``services``, ``w1``, ``w2``), its own
Redis and S3 server on the services host, the API there, and a worker per worker host; all
of it is torn down after the test, the namespaces last. The test's thread runs on the
services host meanwhile (``Network.enter``), so its requests, Redis and S3 calls never cross
a link the test cuts.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import boto3
import pytest

from conftest import start_moto, stop_process
from faults.faultkit import RedisServer, kill_all, write_images
from multihost.fleet import MULTIHOST_ENV, S3_PORT, Fleet, predicted_digests
from multihost.netns import network
from support import System, system_env

HOSTS = ["services", "w1", "w2"]
BATCH = 48
PHOTO_SIZE = (240, 320)  # ~0.1 s of model per photo: a batch lasts long enough to cut into


def _require_tools() -> None:
    """A clear failure (never a skip) on a machine that cannot build the network."""
    missing = [tool for tool in ("ip", "nft", "unshare") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        raise RuntimeError(f"the multihost suite needs root and {missing or 'ip, nft'} "
                           "(scripts/bootstrap installs nftables and faketime as root)")


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The batch every scenario submits: distinct photo crops."""
    return write_images(tmp_path_factory.mktemp("multihost-photos"), BATCH, PHOTO_SIZE)


@pytest.fixture(scope="session")
def predicted(tmp_path_factory: pytest.TempPathFactory, photos: list[Path],
              checkpoint_path: Path, model_cache: Path) -> dict[str, dict]:
    """``depthfleet predict`` of the batch, outside any fleet (it also warms the model cache
    every worker then finds ready)."""
    env = system_env("", "", None, checkpoint_path, model_cache)
    return predicted_digests(photos, tmp_path_factory.mktemp("multihost-predict"), env)


@pytest.fixture()
def fleet_factory(tmp_path: Path, checkpoint_path: Path, model_cache: Path,
                  predicted: dict[str, dict]) -> Iterator[Callable[..., Fleet]]:
    """``fleet_factory(skews={"w2": -300}, **DEPTHFLEET_env)``: the whole fleet up and ready."""
    _require_tools()
    with ExitStack() as cleanup:

        def make(skews: dict[str, int] | None = None, **extra: str) -> Fleet:
            net = cleanup.enter_context(network(HOSTS))
            services = cleanup.enter_context(net.enter("services"))
            redis_server = RedisServer(tmp_path / "redis", services.address, 6379)
            cleanup.callback(redis_server.stop)
            redis_server.start()
            moto = start_moto(tmp_path / "moto.log", S3_PORT, "0.0.0.0")
            cleanup.callback(stop_process, moto)
            endpoint = f"http://{services.address}:{S3_PORT}"
            direct = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                  aws_access_key_id="testing", aws_secret_access_key="testing")
            bucket = f"multihost-{uuid.uuid4().hex[:12]}"
            direct.create_bucket(Bucket=bucket)
            env = system_env(redis_server.url, f"s3://{bucket}/df", endpoint, checkpoint_path,
                             model_cache, **{**MULTIHOST_ENV, **extra})
            fleet = Fleet(System(env, tmp_path / "logs"), redis_server, None, bucket, direct,
                          net=net)
            cleanup.callback(kill_all, fleet.system)
            for host in ("w1", "w2"):
                fleet.start_worker(host, (skews or {}).get(host, 0))
            fleet.system.start_api()
            fleet.wait_ready()
            return fleet

        yield make

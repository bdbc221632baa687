"""The one way blueprints reach shared resources: settings, job store, storage, Celery.

Clients are created lazily, once per process (gunicorn forks workers after import), and kept
in ``app.extensions``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from flask import Flask, current_app

from depthfleet.api.renders import RenderPool
from depthfleet.shared.fairshare import FairShare
from depthfleet.shared.jobs import JobStore, connect
from depthfleet.shared.queue import fair_share as make_fair_share
from depthfleet.shared.queue import make_celery
from depthfleet.shared.settings import Settings
from depthfleet.shared.storage import Storage, open_storage

_KEY = "depthfleet"


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions[_KEY] = {"settings": settings}


def _resources() -> dict[str, Any]:
    return current_app.extensions[_KEY]


def _lazy(name: str, factory: Any) -> Any:
    resources = _resources()
    if name not in resources:
        resources[name] = factory(resources["settings"])
    return resources[name]


def settings() -> Settings:
    return _resources()["settings"]


def store() -> JobStore:
    return _lazy("store", lambda s: JobStore(connect(s.redis_url or ""), s.job_ttl_days * 86400))


def storage() -> Storage:
    return _lazy("storage", open_storage)


def celery() -> Celery:
    return _lazy("celery", make_celery)


def fair_share() -> FairShare:
    return _lazy("fair_share", lambda s: make_fair_share(store(), s))


def render_pool() -> RenderPool:
    return _lazy("render_pool", lambda s: RenderPool(s.render_threads))

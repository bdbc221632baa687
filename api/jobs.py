"""``/v1/jobs``: submit, poll, page through items, fetch artifacts, cancel, retry.

Every route looks the job up for the calling tenant only, so another tenant's job is a 404,
exactly like a job that never existed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Response, redirect, request, send_file, stream_with_context, url_for

from depthfleet.api import ingest, services
from depthfleet.api.auth import current_tenant
from depthfleet.shared.errors import DepthFleetError
from depthfleet.shared.imaging.encode import ARTIFACTS
from depthfleet.shared.jobs import JobStatus
from depthfleet.shared.queue import enqueue_ingest, enqueue_items
from depthfleet.shared.storage import ObjectMissing, Storage

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

PAGE_DEFAULT = 100
PAGE_MAX = 1000
ARTIFACT_BY_FILENAME = {spec.filename: name for name, spec in ARTIFACTS.items()}


class NotFound(DepthFleetError):
    def __init__(self, what: str = "job") -> None:
        super().__init__("not_found", f"no such {what}", 404)


class Busy(DepthFleetError):
    def __init__(self) -> None:
        super().__init__("queue_full", "too much work is queued; retry later", 429)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def _job_or_404(job_id: str) -> JobStatus:
    status = services.store().status(job_id, tenant=current_tenant())
    if status is None:
        raise NotFound()
    return status


def status_body(status: JobStatus) -> dict[str, Any]:
    return {
        "id": status.id, "status": status.status, "total": status.total,
        "succeeded": status.succeeded, "failed": status.failed, "pending": status.pending,
        "cancelled": status.cancelled, "reused": status.reused, "ingesting": status.ingesting,
        "progress": round(status.progress, 6), "options": status.options,
        "created_at": _iso(status.created_at), "updated_at": _iso(status.updated_at),
        "links": {"self": url_for("jobs.get_job", job_id=status.id, _external=True),
                  "items": url_for("jobs.list_items", job_id=status.id, _external=True),
                  "manifest": url_for("jobs.manifest", job_id=status.id, _external=True)},
    }


def item_body(job_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """An item as clients see it: storage keys become artifact URLs of this API."""
    artifacts = {name: url_for("jobs.artifact", job_id=job_id, index=record["index"],
                               filename=ARTIFACTS[name].filename, _external=True)
                 for name in record.get("artifacts") or {}}
    return {
        "index": record["index"], "name": record["name"], "status": record["status"],
        "width": record.get("width"), "height": record.get("height"),
        "error": record.get("error"), "depth_min": record.get("depth_min"),
        "depth_max": record.get("depth_max"), "artifacts": artifacts,
        "sha256": record.get("sha256"), "reused": bool(record.get("reused")),
        "retryable": record["status"] == "failed" and bool(record.get("retryable")),
    }


@bp.post("")
def create_job() -> tuple[Response, int, dict[str, str]]:
    store, settings = services.store(), services.settings()
    if store.pending_items() >= settings.max_queued_items:
        raise Busy()
    tenant = current_tenant()
    idempotency_key = request.headers.get("Idempotency-Key", "").strip()[:128]
    earlier = idempotency_key and store.job_for_idempotency_key(tenant, idempotency_key)
    if earlier:
        return _accepted(_job_or_404(earlier))
    if request.mimetype == "application/json":
        job_request = ingest.from_json(request.get_json(silent=True), tenant)
    else:
        job_request = ingest.from_multipart(request.files.getlist("file"),
                                            request.form.get("options"), tenant)
    job_id, queued = store.create_job(tenant, job_request.items, job_request.options,
                                      ingesting=bool(job_request.deferred))
    accepted = _job_or_404(job_id)  # as committed, before any worker can touch it
    if idempotency_key:  # before sending: a client retrying a failed send gets this same job
        store.remember_idempotency_key(tenant, idempotency_key, job_id)
    _enqueue(job_id, queued)
    if job_request.deferred:
        enqueue_ingest(services.celery(), job_id, job_request.deferred)
    return _accepted(accepted)


def _accepted(status: JobStatus) -> tuple[Response, int, dict[str, str]]:
    body = status_body(status)
    return Response(json.dumps(body), mimetype="application/json"), 202, \
        {"Location": body["links"]["self"]}


def _enqueue(job_id: str, indexes: list[int]) -> None:
    """Send items to the workers; called only once they are stored (never before)."""
    enqueue_items(services.celery(), job_id, indexes, services.settings().items_per_task)


@bp.get("/<job_id>")
def get_job(job_id: str) -> dict[str, Any]:
    return status_body(_job_or_404(job_id))


@bp.get("/<job_id>/items")
def list_items(job_id: str) -> dict[str, Any]:
    status = _job_or_404(job_id)
    offset = max(0, request.args.get("offset", 0, type=int))
    limit = min(PAGE_MAX, max(1, request.args.get("limit", PAGE_DEFAULT, type=int)))
    records = services.store().items(job_id, offset, limit)
    more = offset + limit < status.total
    return {
        "items": [item_body(job_id, r) for r in records],
        "total": status.total,
        "next": url_for("jobs.list_items", job_id=job_id, offset=offset + limit, limit=limit,
                        _external=True) if more else None,
    }


@bp.get("/<job_id>/manifest.jsonl")
def manifest(job_id: str) -> Response:
    status = _job_or_404(job_id)
    store = services.store()

    def lines() -> Iterator[str]:
        for record in store.iter_items(job_id, status.total):
            yield json.dumps(item_body(job_id, record)) + "\n"

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson")


@bp.get("/<job_id>/items/<int:index>/<filename>")
def artifact(job_id: str, index: int, filename: str) -> Response:
    _job_or_404(job_id)
    name = ARTIFACT_BY_FILENAME.get(filename)
    record = services.store().item(job_id, index)
    if name is None or record is None or name not in (record.get("artifacts") or {}):
        raise NotFound("artifact")
    key = record["artifacts"][name]
    storage, settings = services.storage(), services.settings()
    # ?inline=1 (the web page): bytes from this origin, since fetch() cannot follow a redirect
    # to a storage host that sends no CORS headers.
    if request.args.get("inline") != "1":
        presigned = storage.presigned_url(key, settings.presign_seconds)
        if presigned:
            return redirect(presigned, code=302)
    body = storage.local_path(key) or _stored_bytes(storage, key)
    response = send_file(body, mimetype=ARTIFACTS[name].content_type, max_age=3600,
                         download_name=f"{index}.{filename}")
    response.cache_control.public = False
    response.cache_control.private = True  # a tenant's data: never in a shared cache
    return response


def _stored_bytes(storage: Storage, key: str) -> io.BytesIO:
    try:
        return io.BytesIO(storage.get(key))
    except ObjectMissing:
        raise NotFound("artifact") from None


@bp.delete("/<job_id>")
def cancel_job(job_id: str) -> dict[str, Any]:
    _job_or_404(job_id)
    services.store().cancel_job(job_id)
    return status_body(_job_or_404(job_id))


@bp.post("/<job_id>/retry")
def retry_job(job_id: str) -> tuple[dict[str, Any], int]:
    _job_or_404(job_id)
    store = services.store()
    requeued = [i for i in store.retryable_indexes(job_id) if store.requeue_item(job_id, i)]
    if requeued:
        _enqueue(job_id, requeued)
    return {**status_body(_job_or_404(job_id)), "requeued": len(requeued)}, 202

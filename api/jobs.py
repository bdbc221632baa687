"""``/v1/jobs``: submit, poll, page through items, fetch artifacts, cancel, retry.

Every route looks the job up for the calling tenant only, so another tenant's job is a 404,
exactly like a job that never existed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Response, redirect, request, send_file, stream_with_context
from werkzeug.wrappers import Response as BaseResponse  # what redirect() returns

from depthfleet.api import ingest, renders, services
from depthfleet.api.auth import current_tenant
from depthfleet.api.bodies import json_body
from depthfleet.api.links import external
from depthfleet.shared.artifacts import ARTIFACTS, BY_FILENAME, FULL_SIZE
from depthfleet.shared.depth import output_size
from depthfleet.shared.errors import DepthFleetError, InputError
from depthfleet.shared.jobs import JobStatus
from depthfleet.shared.queue import dispatch, enqueue_ingest, enqueue_items
from depthfleet.shared.storage import ObjectMissing, Storage

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

PAGE_DEFAULT = 100
PAGE_MAX = 1000
MAX_SIDE_LIMIT = 65_535


class NotFound(DepthFleetError):
    def __init__(self, what: str = "job") -> None:
        super().__init__("not_found", f"no such {what}", 404)


class NotRenderable(DepthFleetError):
    """A result stored before compact results: only its stored size exists."""

    def __init__(self) -> None:
        super().__init__("not_renderable", "this result was stored before depth_raw existed; "
                         "only its stored size is available (omit max_side)", 409)


class Busy(DepthFleetError):
    """429: the fleet, or this tenant, has as much work pending as it may (``Retry-After``)."""

    def __init__(self, message: str = "too much work is queued; retry later") -> None:
        super().__init__("queue_full", message, 429)


class TooManyItems(DepthFleetError):
    def __init__(self, count: int, quota: int) -> None:
        super().__init__("too_many_items", f"the request holds {count:,} items; one tenant "
                         f"may have at most {quota:,} pending (DEPTHFLEET_TENANT_MAX_QUEUED_ITEMS)",
                         413)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


JOB_ID_DIGITS = frozenset("0123456789abcdef")


def valid_job_id(job_id: object) -> bool:
    """Job ids are ``uuid4().hex``; anything else names no job (and never reaches Redis)."""
    return isinstance(job_id, str) and len(job_id) == 32 and set(job_id) <= JOB_ID_DIGITS


def _job_or_404(job_id: str) -> JobStatus:
    if not valid_job_id(job_id):
        raise NotFound()
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
        "links": {"self": external("jobs.get_job", job_id=status.id),
                  "items": external("jobs.list_items", job_id=status.id),
                  "manifest": external("jobs.manifest", job_id=status.id)},
    }


def offered_artifacts(record: dict[str, Any]) -> list[str]:
    """What an item can be asked for: what is stored, and every full-size artifact if
    depth_raw is stored to render it from (results from before it: what they stored)."""
    stored = record.get("artifacts") or {}
    renderable = FULL_SIZE if "depth_raw" in stored else ()
    return [name for name in ARTIFACTS if name in stored or name in renderable]


def item_body(job_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """An item as clients see it: storage keys become artifact URLs of this API."""
    artifacts = {name: external("jobs.artifact", job_id=job_id, index=record["index"],
                                filename=ARTIFACTS[name].filename)
                 for name in offered_artifacts(record)}
    return {
        "index": record["index"], "name": record["name"], "raw_name": record.get("raw_name"),
        "status": record["status"],
        "width": record.get("width"), "height": record.get("height"),
        "error": record.get("error"), "depth_min": record.get("depth_min"),
        "depth_max": record.get("depth_max"), "artifacts": artifacts,
        "sha256": record.get("sha256"), "reused": bool(record.get("reused")),
        "retryable": record["status"] == "failed" and bool(record.get("retryable")),
    }


@bp.post("")
def create_job() -> tuple[Response, int, dict[str, str]]:
    """Store what the request holds, create the job, send its first tasks; that is all.

    Archives are stored whole and expanded by a worker; images are checked from their
    header only. Nothing here costs more than reading and storing the request's bytes.
    """
    store, tenant = services.store(), current_tenant()
    _check_capacity(tenant, 0)
    idempotency_key = request.headers.get("Idempotency-Key", "").strip()[:256] or None
    earlier = idempotency_key and store.job_for_idempotency_key(tenant, idempotency_key)
    if earlier:
        return _accepted(_job_or_404(earlier))
    if request.mimetype == "application/json":
        job_request = ingest.from_json(json_body(), tenant)
    else:
        job_request = ingest.from_multipart(request.files.getlist("file"),
                                            request.form.get("options"), tenant)
    items = list(job_request.items)
    _check_capacity(tenant, len(items))
    created = store.create_job(tenant, items, job_request.options,
                               ingesting=bool(job_request.deferred),
                               idempotency_key=idempotency_key)
    accepted = _job_or_404(created.job_id)  # as committed, before any worker can touch it
    if not created.existing:
        _start(created.job_id, tenant, job_request.deferred)
    return _accepted(accepted)


def _check_capacity(tenant: str, adding: int) -> None:
    """429 if the fleet or this tenant is at its limit; 413 if the request never fits."""
    store, settings = services.store(), services.settings()
    quota = settings.tenant_max_queued_items
    if adding > quota:
        raise TooManyItems(adding, quota)
    adding = max(1, adding)  # before the body is read: room for at least one more item
    if store.pending_items() + adding > settings.max_queued_items:
        raise Busy()
    if store.pending_items(tenant) + adding > quota:
        raise Busy(f"this API key has {quota:,} items pending at most "
                   "(DEPTHFLEET_TENANT_MAX_QUEUED_ITEMS); retry when some have finished")


def _start(job_id: str, tenant: str, deferred: list[dict[str, str]]) -> None:
    """Hand a stored job to the workers: its first tasks in turn with the tenant's others,
    and the expansion of what it names in storage."""
    services.fair_share().add_job(tenant, job_id)
    dispatch(services.celery(), services.fair_share(), tenant)
    if deferred:
        enqueue_ingest(services.celery(), job_id, deferred)


def _accepted(status: JobStatus) -> tuple[Response, int, dict[str, str]]:
    body = status_body(status)
    return Response(json.dumps(body), mimetype="application/json"), 202, \
        {"Location": body["links"]["self"]}


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
        "next": external("jobs.list_items", job_id=job_id, offset=offset + limit,
                         limit=limit) if more else None,
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
def artifact(job_id: str, index: int, filename: str) -> BaseResponse:
    """An artifact's bytes (``?inline=1``) or a redirect to them in storage; full-size ones
    of compact results are rendered on first read (``?max_side=N`` for a smaller size)."""
    status = _job_or_404(job_id)
    name = BY_FILENAME.get(filename)
    record = services.store().item(job_id, index)
    if name is None or record is None or name not in offered_artifacts(record):
        raise NotFound("artifact")
    key = _artifact_key(status, record, name, _max_side_arg())
    return _send(key, name, f"{index}.{filename}")


def _max_side_arg() -> int | None:
    raw = request.args.get("max_side")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_SIDE_LIMIT:
        raise InputError("invalid_max_side", f"max_side must be a whole number 1..{MAX_SIDE_LIMIT}")
    return int(raw)


def _artifact_key(status: JobStatus, record: dict[str, Any], name: str,
                  asked: int | None) -> str:
    """The stored object that answers: the stored artifact if it has the size asked for
    (``max_side`` only ever shrinks the job's size), else a render of depth_raw."""
    stored = record.get("artifacts") or {}
    job_side = status.options.get("max_side")
    side = job_side if asked is None else min(asked, job_side or asked)
    width, height = int(record["width"]), int(record["height"])
    same_size = output_size(height, width, side) == output_size(height, width, job_side)
    if name in stored and (same_size or not ARTIFACTS[name].full_size):
        return stored[name]
    if "depth_raw" not in stored:
        raise NotRenderable()
    settings = services.settings()
    try:
        return renders.rendered_key(services.storage(), services.store(), services.render_pool(),
                                    stored["depth_raw"], width, height, name, side,
                                    settings.lease_seconds)
    except ObjectMissing:
        raise NotFound("artifact") from None


def _send(key: str, name: str, download_name: str) -> BaseResponse:
    """A stored object as the response: a redirect to storage, or its bytes streamed.

    ``?inline=1`` (the web page): bytes from this origin, since fetch() cannot follow a
    redirect to a storage host that sends no CORS headers.
    """
    storage, settings = services.storage(), services.settings()
    if request.args.get("inline") != "1":
        presigned = storage.presigned_url(key, settings.presign_seconds)
        if presigned:
            return redirect(presigned, code=302)
    path = storage.local_path(key)
    if path is not None:
        response = send_file(path, mimetype=ARTIFACTS[name].content_type, max_age=3600,
                             download_name=download_name)
    else:
        response = _streamed(storage, key, ARTIFACTS[name].content_type, download_name)
    response.cache_control.public = False
    response.cache_control.private = True  # a tenant's data: never in a shared cache
    return response


def _streamed(storage: Storage, key: str, content_type: str, download_name: str) -> Response:
    try:
        stored = storage.stream(key)
    except ObjectMissing:
        raise NotFound("artifact") from None
    response = Response(stored.chunks, mimetype=content_type, direct_passthrough=True)
    response.content_length = stored.size
    response.cache_control.max_age = 3600
    response.headers["Content-Disposition"] = f'inline; filename="{download_name}"'
    return response


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
        enqueue_items(services.celery(), job_id, requeued, services.settings().items_per_task)
    return {**status_body(_job_or_404(job_id)), "requeued": len(requeued)}, 202

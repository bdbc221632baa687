"""``/v1/jobs``: submit, poll, page through items, fetch artifacts, cancel, retry.

Every route looks the job up for the calling tenant only, so another tenant's job is a 404,
exactly like a job that never existed.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, redirect, request, send_file, stream_with_context

from depthfleet.api import ingest, renders, services
from depthfleet.api.auth import current_tenant
from depthfleet.api.bodies import json_body
from depthfleet.api.bundle import JobFiles, zip_stream
from depthfleet.api.links import external, signed
from depthfleet.outputs import artifact_file, relative_names
from depthfleet.shared.artifacts import ARTIFACTS, BY_FILENAME, COMPACT, FULL_SIZE, check_names
from depthfleet.shared.depth import output_size
from depthfleet.shared.errors import DepthFleetError, InputError
from depthfleet.shared.jobs import JobCursor, JobStatus, valid_job_id
from depthfleet.shared.queue import dispatch, enqueue_ingest, enqueue_items
from depthfleet.shared.storage import ObjectMissing, Storage

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

PAGE_DEFAULT = 100
PAGE_MAX = 1000
JOBS_DEFAULT = 20
JOBS_MAX = 100
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
                  "manifest": external("jobs.manifest", job_id=status.id),
                  "results_zip": signed("jobs.results_zip", status.tenant, job_id=status.id)},
    }


def offered_artifacts(record: dict[str, Any]) -> list[str]:
    """What an item can be asked for: what is stored, and every full-size artifact if
    depth_raw is stored to render it from (results from before it: what they stored)."""
    stored = record.get("artifacts") or {}
    renderable = FULL_SIZE if "depth_raw" in stored else ()
    return [name for name in ARTIFACTS if name in stored or name in renderable]


def item_body(job_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """An item as clients see it: storage keys become artifact URLs of this API, and
    ``links`` the same URLs signed, for ``<a href>``/``<img src>`` without an API key."""
    offered = offered_artifacts(record)
    where = {name: {"job_id": job_id, "index": record["index"],
                    "filename": ARTIFACTS[name].filename} for name in offered}
    artifacts = {name: external("jobs.artifact", **where[name]) for name in offered}
    links = {name: signed("jobs.artifact", current_tenant(), **where[name]) for name in offered}
    return {
        "index": record["index"], "name": record["name"], "raw_name": record.get("raw_name"),
        "status": record["status"],
        "width": record.get("width"), "height": record.get("height"),
        "error": record.get("error"), "depth_min": record.get("depth_min"),
        "depth_max": record.get("depth_max"), "artifacts": artifacts, "links": links,
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


@bp.get("")
def list_jobs() -> dict[str, Any]:
    """The caller's jobs, newest first, a page at a time (``?limit=``, ``?cursor=``)."""
    limit = _whole_arg("limit", JOBS_DEFAULT, JOBS_MAX, "invalid_limit")
    after = None
    if "cursor" in request.args:
        after = JobCursor.parse(request.args["cursor"])
        if after is None:
            raise InputError("invalid_cursor", "cursor must be a next_cursor this API returned")
    jobs, cursor = services.store().job_page(current_tenant(), limit, after)
    return {"jobs": [status_body(status) for status in jobs],
            "next_cursor": str(cursor) if cursor else None}


def _whole_arg(name: str, default: int, maximum: int, code: str) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise InputError(code, f"{name} must be a whole number 1..{maximum}")
    return int(raw)


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
def artifact(job_id: str, index: int, filename: str) -> Response:
    """An artifact's bytes (``?inline=1``) or a redirect to them in storage; full-size ones
    of compact results are rendered on first read (``?max_side=N`` for a smaller size)."""
    status = _job_or_404(job_id)
    name = BY_FILENAME.get(filename)
    record = services.store().item(job_id, index)
    if name is None or record is None or name not in offered_artifacts(record):
        raise NotFound("artifact")
    max_side = _max_side_arg()
    try:
        key = _artifact_key(status, record, name, max_side)
    except ObjectMissing:
        raise NotFound("artifact") from None
    return _send(key, name, download_name(record["name"], name))


@bp.get("/<job_id>/results.zip")
def results_zip(job_id: str) -> Response:
    """Every succeeded item's ``?outputs=`` (default: what the job stored) as one ZIP, named
    like ``depthfleet run`` names files, streamed; ``failures.json`` lists the others."""
    status = _job_or_404(job_id)
    outputs = _outputs_arg(status)
    files = JobFiles(services.store(), services.storage(), status, outputs,
                     key_for=lambda record, name: _artifact_key(status, record, name, None),
                     offered=offered_artifacts)
    response = Response(stream_with_context(zip_stream(files.entries(), status.created_at)),
                        mimetype="application/zip", direct_passthrough=True)
    _disposition(response, f"depthfleet-{job_id}.zip", attachment=True)
    response.cache_control.no_store = True  # changes while the job runs
    return response


def _outputs_arg(status: JobStatus) -> tuple[str, ...]:
    raw = request.args.get("outputs")
    if raw is None or not raw.strip():
        return check_names(status.options.get("outputs") or COMPACT)
    try:
        return check_names(name.strip() for name in raw.split(",") if name.strip())
    except ValueError as exc:
        raise InputError("invalid_outputs", str(exc)) from None


def download_name(item_name: str, artifact: str) -> str:
    """``album/IMG_1.jpg`` + ``depth_png`` -> ``IMG_1.depth.png``: what a browser saves."""
    path = relative_names([item_name])[0]
    return artifact_file({}, path, artifact).rsplit("/", 1)[-1]


def _max_side_arg() -> int | None:
    if request.args.get("max_side") is None:
        return None
    return _whole_arg("max_side", 0, MAX_SIDE_LIMIT, "invalid_max_side")


def _artifact_key(status: JobStatus, record: dict[str, Any], name: str,
                  asked: int | None) -> str:
    """The stored object that answers: the stored artifact if it has the size asked for
    (``max_side`` only ever shrinks the job's size), else a render of depth_raw
    (``ObjectMissing`` if depth_raw is gone)."""
    stored = record.get("artifacts") or {}
    job_side = status.options.get("max_side")
    side = job_side if asked is None else min(asked, job_side or asked)
    width, height = int(record["width"]), int(record["height"])
    same_size = output_size(height, width, side) == output_size(height, width, job_side)
    if name in stored and (same_size or not ARTIFACTS[name].full_size):
        return stored[name]
    if "depth_raw" not in stored:
        raise NotRenderable()
    return renders.rendered_key(services.storage(), services.store(), services.render_pool(),
                                stored["depth_raw"], width, height, name, side,
                                services.settings().lease_seconds)


def _send(key: str, name: str, download_name: str) -> Response:
    """A stored object as the response: a redirect to storage, or its bytes streamed.

    ``?inline=1`` (the web page): bytes from this origin, since fetch() cannot follow a
    redirect to a storage host that sends no CORS headers. ``?download=1``: bytes from
    here too, as an attachment named after the photo (``IMG_1.depth.png``).
    """
    storage, settings = services.storage(), services.settings()
    attachment = request.args.get("download") == "1"
    if request.args.get("inline") != "1" and not attachment:
        presigned = storage.presigned_url(key, settings.presign_seconds)
        if presigned:
            return redirect(presigned, code=302)
    path = storage.local_path(key)
    if path is not None:
        response = send_file(path, mimetype=ARTIFACTS[name].content_type, max_age=3600)
    else:
        response = _streamed(storage, key, ARTIFACTS[name].content_type)
    _disposition(response, download_name, attachment)
    response.cache_control.public = False
    response.cache_control.private = True  # a tenant's data: never in a shared cache
    return response


def _streamed(storage: Storage, key: str, content_type: str) -> Response:
    try:
        stored = storage.stream(key)
    except ObjectMissing:
        raise NotFound("artifact") from None
    response = Response(stored.chunks, mimetype=content_type, direct_passthrough=True)
    response.content_length = stored.size
    response.cache_control.max_age = 3600
    return response


def _disposition(response: Response, filename: str, attachment: bool) -> None:
    """``Content-Disposition`` with ``filename`` (RFC 6266: an ASCII fallback, and the
    name itself as ``filename*`` when it is not ASCII)."""
    fallback = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    fallback = "".join(c for c in fallback if c.isprintable() and c not in '"\\')
    fallback = f"photo{fallback}" if fallback.startswith(".") or not fallback else fallback
    params = {"filename": fallback}
    if fallback != filename:
        params["filename*"] = "UTF-8''" + quote(filename, safe="")
    response.headers.set("Content-Disposition", "attachment" if attachment else "inline",
                         **params)


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

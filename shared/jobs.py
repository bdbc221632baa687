"""The job store: jobs, their items and their counters in Redis.

This is the only module that knows Redis key names. Every item state change goes through
``_transition`` (one Lua script), which moves an item between states and adjusts the job's
counters in the same atomic step; a terminal item is never moved again except by an explicit
retry, so a task that runs twice counts its items once.

Keys (all expire ``job_ttl_days`` after the job's last change):
  df:job:{id}          hash   tenant, created_at, updated_at, options, total, queued, running,
                              succeeded, failed, cancelled, reused, cancel_requested
  df:job:{id}:items    hash   index -> item record (JSON)
  df:tenant:{t}:jobs   zset   job id -> created_at (the tenant's job list)
  df:leases            zset   "{id}:{index}" -> lease expiry of running items (the reaper's view)
  df:stats             hash   global counters: pending items (backpressure), model runs
  df:idem:{t}:{key}    string job id created by a request with that Idempotency-Key
  df:lock:{name}       string short-lived lock: one process computes a deduplicated result
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

TERMINAL = ("succeeded", "failed", "cancelled")
STATES = ("queued", "running", *TERMINAL)
WRITE_CHUNK = 1000

# KEYS: job hash, items hash, leases zset, stats hash
# ARGV: index, allowed-from states (comma list), new state, patch JSON, now, lease expiry,
#       lease member, ttl seconds
_TRANSITION_LUA = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return -1 end
local item = cjson.decode(raw)
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == item.status then allowed = true end end
if not allowed then return 0 end
local old = item.status
local patch = cjson.decode(ARGV[4])
for k, v in pairs(patch) do item[k] = v end
item.status = ARGV[3]
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(item))
redis.call('HINCRBY', KEYS[1], old, -1)
redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
if item.reused and ARGV[3] == 'succeeded' then redis.call('HINCRBY', KEYS[1], 'reused', 1) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('EXPIRE', KEYS[2], ARGV[8])
local was_pending = (old == 'queued' or old == 'running')
local is_pending = (ARGV[3] == 'queued' or ARGV[3] == 'running')
if was_pending and not is_pending then redis.call('HINCRBY', KEYS[4], 'pending_items', -1) end
if is_pending and not was_pending then redis.call('HINCRBY', KEYS[4], 'pending_items', 1) end
if ARGV[3] == 'running' then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[7])
else
  redis.call('ZREM', KEYS[3], ARGV[7])
end
return 1
"""


@dataclass
class NewItem:
    """An item as the API creates it: where its bytes are, or why it already failed."""

    name: str
    source: str | None = None  # storage key (uploads) or s3:// URL (bucket ingestion)
    sha256: str | None = None
    size: int | None = None
    error: dict[str, str] | None = None  # set: the item is created failed (bad input)


@dataclass
class JobStatus:
    id: str
    tenant: str
    status: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    pending: int
    reused: int
    created_at: float
    updated_at: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        return 1.0 if self.total == 0 else (self.total - self.pending) / self.total

    @property
    def finished(self) -> bool:
        return self.pending == 0


def _derive_status(counts: dict[str, int], cancel_requested: bool) -> str:
    pending = counts["queued"] + counts["running"]
    if cancel_requested:
        return "cancelled"
    if pending:
        done = counts["succeeded"] + counts["failed"]
        return "running" if counts["running"] or done else "queued"
    if counts["total"] and counts["failed"] == counts["total"]:
        return "failed"
    return "partial" if counts["failed"] else "succeeded"


class JobStore:
    """Create jobs, move items through their states, read status in O(1)."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._transition_script = client.register_script(_TRANSITION_LUA)

    # -- keys ---------------------------------------------------------------------------
    @staticmethod
    def _job_key(job_id: str) -> str:
        return f"df:job:{job_id}"

    @staticmethod
    def _items_key(job_id: str) -> str:
        return f"df:job:{job_id}:items"

    @staticmethod
    def _tenant_key(tenant: str) -> str:
        return f"df:tenant:{tenant}:jobs"

    _LEASES = "df:leases"
    _STATS = "df:stats"

    # -- creation -----------------------------------------------------------------------
    def create_job(self, tenant: str, items: Iterable[NewItem],
                   options: dict[str, Any]) -> tuple[str, list[int]]:
        """Store a job and all its items; returns its id and the indexes to enqueue.

        The caller enqueues tasks only after this returns, so a worker never sees an item
        that is not stored yet.
        """
        job_id = uuid.uuid4().hex
        now = time.time()
        counts = {"total": 0, "queued": 0, "failed": 0}
        queued: list[int] = []
        batch: dict[str, str] = {}
        for index, item in enumerate(items):
            record = _new_record(index, item)
            counts["total"] += 1
            counts[record["status"]] += 1
            if record["status"] == "queued":
                queued.append(index)
            batch[str(index)] = json.dumps(record, separators=(",", ":"))
            if len(batch) >= WRITE_CHUNK:
                self.redis.hset(self._items_key(job_id), mapping=batch)
                batch = {}
        pipe = self.redis.pipeline()
        if batch:
            pipe.hset(self._items_key(job_id), mapping=batch)
        pipe.hset(self._job_key(job_id), mapping={
            "tenant": tenant, "created_at": now, "updated_at": now,
            "options": json.dumps(options), "total": counts["total"], "queued": counts["queued"],
            "running": 0, "succeeded": 0, "failed": counts["failed"], "cancelled": 0, "reused": 0,
            "cancel_requested": 0,
        })
        pipe.hincrby(self._STATS, "pending_items", counts["queued"])
        pipe.zadd(self._tenant_key(tenant), {job_id: now})
        for key in (self._job_key(job_id), self._items_key(job_id)):
            pipe.expire(key, self.ttl)
        pipe.expire(self._tenant_key(tenant), self.ttl)
        pipe.execute()
        return job_id, queued

    def job_for_idempotency_key(self, tenant: str, key: str) -> str | None:
        """The job an earlier request with this ``Idempotency-Key`` created, if any."""
        found = self.redis.get(f"df:idem:{tenant}:{key}")
        return found.decode() if found else None

    def remember_idempotency_key(self, tenant: str, key: str, job_id: str) -> None:
        self.redis.set(f"df:idem:{tenant}:{key}", job_id, ex=self.ttl, nx=True)

    # -- reading ------------------------------------------------------------------------
    def status(self, job_id: str, tenant: str | None = None) -> JobStatus | None:
        """The job's status, or None if it does not exist or belongs to another tenant."""
        raw = self.redis.hgetall(self._job_key(job_id))
        if not raw:
            return None
        data = {k.decode(): v.decode() for k, v in raw.items()}
        if tenant is not None and data["tenant"] != tenant:
            return None
        counts = {k: int(data.get(k, 0)) for k in ("total", *STATES, "reused")}
        return JobStatus(
            id=job_id, tenant=data["tenant"],
            status=_derive_status(counts, data.get("cancel_requested") == "1"),
            total=counts["total"], succeeded=counts["succeeded"], failed=counts["failed"],
            cancelled=counts["cancelled"], pending=counts["queued"] + counts["running"],
            reused=counts["reused"], created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]), options=json.loads(data.get("options", "{}")),
        )

    def items(self, job_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
        """Item records ``offset .. offset+limit-1`` (fewer at the end)."""
        fields = [str(i) for i in range(offset, offset + limit)]
        if not fields:
            return []
        return [json.loads(raw) for raw in self.redis.hmget(self._items_key(job_id), fields) if raw]

    def item(self, job_id: str, index: int) -> dict[str, Any] | None:
        raw = self.redis.hget(self._items_key(job_id), str(index))
        return json.loads(raw) if raw else None

    def iter_items(self, job_id: str, total: int, page: int = 500) -> Iterator[dict[str, Any]]:
        """Every item in index order, one page in memory at a time (manifest streaming)."""
        for offset in range(0, total, page):
            yield from self.items(job_id, offset, page)

    def tenant_jobs(self, tenant: str, limit: int = 50) -> list[str]:
        return [j.decode() for j in self.redis.zrevrange(self._tenant_key(tenant), 0, limit - 1)]

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self._job_key(job_id), "cancel_requested") == b"1"

    def pending_items(self) -> int:
        return int(self.redis.hget(self._STATS, "pending_items") or 0)

    # -- transitions --------------------------------------------------------------------
    def _transition(self, job_id: str, index: int, allowed: tuple[str, ...], new: str,
                    patch: dict[str, Any] | None = None, lease_seconds: float = 0) -> bool:
        now = time.time()
        result = self._transition_script(
            keys=[self._job_key(job_id), self._items_key(job_id), self._LEASES, self._STATS],
            args=[str(index), ",".join(allowed), new, json.dumps(patch or {}), now,
                  now + lease_seconds, f"{job_id}:{index}", self.ttl],
        )
        return result == 1

    def start_item(self, job_id: str, index: int, lease_seconds: float) -> bool:
        """queued (or running with a lapsed lease: a redelivered task) -> running."""
        return self._transition(job_id, index, ("queued", "running"), "running",
                                {"started_at": time.time()}, lease_seconds)

    def succeed_item(self, job_id: str, index: int, result: dict[str, Any]) -> bool:
        return self._transition(job_id, index, ("queued", "running"), "succeeded",
                                {**result, "error": None, "finished_at": time.time()})

    def fail_item(self, job_id: str, index: int, code: str, message: str, final: bool) -> bool:
        """Mark failed; ``final`` errors (bad input) are not requeued by a job retry."""
        error = {"code": code, "message": message}
        return self._transition(job_id, index, ("queued", "running"), "failed",
                                {"error": error, "retryable": not final, "finished_at": time.time()})

    def cancel_item(self, job_id: str, index: int) -> bool:
        return self._transition(job_id, index, ("queued",), "cancelled")

    def requeue_item(self, job_id: str, index: int) -> bool:
        """failed (retryable) -> queued, for ``POST /v1/jobs/{id}/retry``."""
        item = self.item(job_id, index)
        if not item or item["status"] != "failed" or not item.get("retryable"):
            return False
        return self._transition(job_id, index, ("failed",), "queued", {"error": None})

    def cancel_job(self, job_id: str) -> int:
        """Flag the job cancelled and cancel every item not yet started; returns how many."""
        self.redis.hset(self._job_key(job_id), "cancel_requested", 1)
        cancelled = 0
        for field_name, raw in self.redis.hscan_iter(self._items_key(job_id), count=WRITE_CHUNK):
            if json.loads(raw)["status"] == "queued":
                cancelled += self.cancel_item(job_id, int(field_name))
        return cancelled

    def retryable_indexes(self, job_id: str) -> list[int]:
        return sorted(
            int(f) for f, raw in self.redis.hscan_iter(self._items_key(job_id), count=WRITE_CHUNK)
            if (rec := json.loads(raw))["status"] == "failed" and rec.get("retryable"))

    def expired_leases(self, now: float | None = None, limit: int = 1000) -> list[tuple[str, int]]:
        """Running items whose worker stopped renewing (vanished): candidates for requeue."""
        members = self.redis.zrangebyscore(self._LEASES, "-inf", now or time.time(), 0, limit)
        return [(m.decode().rsplit(":", 1)[0], int(m.decode().rsplit(":", 1)[1])) for m in members]

    @contextmanager
    def render_lock(self, name: str, seconds: float) -> Iterator[bool]:
        """Try to become the one process computing ``name``; yields whether we are.

        The lock expires by itself, so a worker that dies holding it delays the others by
        at most ``seconds``.
        """
        key, token = f"df:lock:{name}", uuid.uuid4().hex
        owner = bool(self.redis.set(key, token, nx=True, px=int(seconds * 1000)))
        try:
            yield owner
        finally:
            if owner and self.redis.get(key) == token.encode():
                self.redis.delete(key)

    def count_model_run(self) -> None:
        self.redis.hincrby(self._STATS, "model_runs", 1)

    def model_runs(self) -> int:
        return int(self.redis.hget(self._STATS, "model_runs") or 0)


def _new_record(index: int, item: NewItem) -> dict[str, Any]:
    return {
        "index": index, "name": item.name, "status": "failed" if item.error else "queued",
        "source": item.source, "sha256": item.sha256, "size": item.size,
        "error": item.error, "retryable": False, "width": None, "height": None,
        "depth_min": None, "depth_max": None, "artifacts": {}, "reused": False,
    }


def connect(redis_url: str) -> redis.Redis:
    """A Redis client with timeouts and retries suited to a service that must ride out restarts."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )

"""The job store: jobs, their items and their counters in Redis.

This module knows the job store's Redis key names (``shared.fairshare`` owns the few keys of
the fair share, and reads the job hash's ``stored``/``released`` fields). Every item state
change is one Lua script built on ``_MOVE_LUA``, which moves an item between states and
adjusts the job's, the tenant's and the fleet's counters in the same atomic step; a terminal
item is never moved again except by an explicit retry, so a task that runs twice counts its
items once. A worker spends one round trip at an item's start (``begin_item``: cancel check,
start, lease, record) and one at its end (``succeed_item``/``fail_item``); a task one at
its start (``open_task``: its items leased, its job read). Every string of a record is valid
Unicode (``_dumps``), so the scripts' cjson always decodes it.

Keys (all expire ``job_ttl_days`` after the job's last change):
  df:job:{id}          hash   tenant, created_at, updated_at, options, total, stored (end of
                              the last stored chunk), released (items sent by the fair
                              share), queued, running, succeeded, failed, cancelled, reused,
                              cancel_requested, ingesting, ingest_cursor
  df:job:{id}:items    hash   index -> item record (JSON)
  df:tenant:{t}:jobs   zset   job id -> created_at (the tenant's job list)
  df:tenant-stats:{t}  hash   the tenant's pending items (its quota)
  df:tenant:{t}:uploads zset  sha256 -> when the tenant last stored those bytes (uploads/check)
  df:leases            zset   "{id}:{index}" -> lease expiry of items a live task holds (running,
                              or queued in a running or retrying task): the reaper's view
  df:stats             hash   global counters: pending items (backpressure), model runs
  df:idem:{t}:{sha256 of key}  string  the job created by a request with that Idempotency-Key
  df:lock:{name}       string short-lived, renewable lock (one process computes a deduplicated
                              result; one reaper sweeps at a time)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from depthfleet.shared.names import clean_text

TERMINAL = ("succeeded", "failed", "cancelled")
STATES = ("queued", "running", *TERMINAL)
WRITE_CHUNK = 1000

# The one item move, shared by every script that changes an item (Lua text prepended to
# each). KEYS: job hash, items hash, leases zset, stats hash. ARGV[1..6]: index, now, lease
# expiry, lease member, ttl seconds, tenant stats key prefix. ``move`` stores the item in its
# new state and moves the job's, the tenant's and the fleet's counters and the item's lease
# with it; it returns the stored record.
_MOVE_LUA = """
local function load_item()
  local raw = redis.call('HGET', KEYS[2], ARGV[1])
  if raw then return cjson.decode(raw) end
  return nil
end
local function is_pending(status) return status == 'queued' or status == 'running' end
local function move(item, new)
  local old = item.status
  item.status = new
  local record = cjson.encode(item)
  redis.call('HSET', KEYS[2], ARGV[1], record)
  redis.call('HINCRBY', KEYS[1], old, -1)
  redis.call('HINCRBY', KEYS[1], new, 1)
  if item.reused and new == 'succeeded' then redis.call('HINCRBY', KEYS[1], 'reused', 1) end
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  local delta = 0
  if is_pending(old) and not is_pending(new) then delta = -1 end
  if is_pending(new) and not is_pending(old) then delta = 1 end
  if delta ~= 0 then
    redis.call('HINCRBY', KEYS[4], 'pending_items', delta)
    local tenant = redis.call('HGET', KEYS[1], 'tenant')
    if tenant then redis.call('HINCRBY', ARGV[6] .. tenant, 'pending_items', delta) end
  end
  if new == 'running' then
    redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
  else
    redis.call('ZREM', KEYS[3], ARGV[4])
  end
  return record
end
"""

# Move an item from one of the allowed states to a new one, with a patch of its record.
# ARGV[7..9]: allowed-from states (comma list), new state, patch JSON.
# Returns 1 (moved), 0 (not in an allowed state) or -1 (no such item).
_TRANSITION_LUA = _MOVE_LUA + """
local item = load_item()
if not item then return -1 end
local allowed = false
for s in string.gmatch(ARGV[7], '[^,]+') do if s == item.status then allowed = true end end
if not allowed then return 0 end
for k, v in pairs(cjson.decode(ARGV[9])) do item[k] = v end
move(item, ARGV[8])
return 1
"""

# An item's start, in one round trip: the job's cancel flag, the move to running (queued, or
# running with a lapsed lease: a redelivered task) with its lease, and the record the worker
# needs. A cancelled job's queued item is cancelled instead; a finished one is left alone.
# Returns {'started', record}, {'cancelled'} (this call cancelled it) or {'skipped'}.
_START_LUA = _MOVE_LUA + """
local item = load_item()
if not item then return {'skipped'} end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  if item.status ~= 'queued' then return {'skipped'} end
  move(item, 'cancelled')
  return {'cancelled'}
end
if not is_pending(item.status) then return {'skipped'} end
item.started_at = tonumber(ARGV[2])
return {'started', move(item, 'running')}
"""

# Cancel every listed item that is still queued. KEYS: job hash, items hash, stats hash,
# tenant stats hash. ARGV: item indexes.
_CANCEL_QUEUED_LUA = """
local n = 0
for _, index in ipairs(ARGV) do
  local raw = redis.call('HGET', KEYS[2], index)
  if raw then
    local item = cjson.decode(raw)
    if item.status == 'queued' then
      item.status = 'cancelled'
      redis.call('HSET', KEYS[2], index, cjson.encode(item))
      n = n + 1
    end
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[1], 'queued', -n)
  redis.call('HINCRBY', KEYS[1], 'cancelled', n)
  redis.call('HINCRBY', KEYS[3], 'pending_items', -n)
  redis.call('HINCRBY', KEYS[4], 'pending_items', -n)
end
return n
"""


# Lease the listed items that are still pending; GT: a lease is extended, never shortened.
# KEYS: items hash, leases zset, job hash. ARGV: job id, lease expiry, read the job (1/0),
# item indexes... Returns how many were leased, or with "read the job" the job hash's fields
# (a task's first step: its items leased and its job read in one round trip).
_HOLD_LUA = """
local n = 0
for i = 4, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local status = cjson.decode(raw).status
    if status == 'queued' or status == 'running' then
      redis.call('ZADD', KEYS[2], 'GT', ARGV[2], ARGV[1] .. ':' .. ARGV[i])
      n = n + 1
    end
  end
end
if ARGV[3] == '1' then return redis.call('HGETALL', KEYS[3]) end
return n
"""

# Claim the Idempotency-Key (if any) and create the job hash in one step.
# KEYS: job hash, tenant's job list, idempotency key. ARGV: job id, now, ttl, use key (1/0),
# then the job hash's field/value pairs. Returns the job id created, or the one that has the key.
_CREATE_LUA = """
if ARGV[4] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return existing end
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return ARGV[1]
"""

# KEYS: lock key. ARGV: token, new expiry in ms (renew). Acts only for the lock's own holder.
_LOCK_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_LOCK_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class NewItem:
    """An item as the API creates it: where its bytes are, or why it already failed."""

    name: str
    source: str | None = None  # storage key (uploads) or s3:// URL (bucket ingestion)
    raw_name: bytes | None = None  # the name's bytes as stored, when they were not UTF-8
    sha256: str | None = None
    size: int | None = None
    error: dict[str, str] | None = None  # set: the item is created failed (bad input)


@dataclass(frozen=True)
class ItemStart:
    """What ``begin_item`` did: started the item (its record, to process), cancelled it (its
    job is cancelled), or neither (finished by an earlier delivery, or gone)."""

    item: dict[str, Any] | None = None
    cancelled: bool = False


@dataclass(frozen=True)
class Created:
    """What ``create_job`` did: the job, the items to send, whether it existed already."""

    job_id: str
    queued: list[int]
    existing: bool = False


@dataclass(frozen=True)
class JobCursor:
    """Where a page of a tenant's job list ends: the last job's creation time and id."""

    created_at: float
    job_id: str

    def precedes(self, created_at: float, job_id: str) -> bool:
        """Whether the job (created_at, job_id) comes after this cursor in the list."""
        return created_at < self.created_at or (created_at == self.created_at
                                                and job_id < self.job_id)

    def __str__(self) -> str:
        return f"{self.created_at!r}-{self.job_id}"

    @classmethod
    def parse(cls, text: str) -> JobCursor | None:
        """``str(cursor)`` back into a cursor; None if ``text`` is not one."""
        created, sep, job_id = text.rpartition("-")
        try:
            value = float(created)
        except ValueError:
            return None
        ok = sep and valid_job_id(job_id) and 0 <= value < float("inf")
        return cls(value, job_id) if ok else None


JOB_ID_DIGITS = frozenset("0123456789abcdef")


def valid_job_id(job_id: object) -> bool:
    """Job ids are ``uuid4().hex``; anything else names no job (and never reaches Redis)."""
    return isinstance(job_id, str) and len(job_id) == 32 and set(job_id) <= JOB_ID_DIGITS


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
    ingesting: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        return 1.0 if self.total == 0 else (self.total - self.pending) / self.total

    @property
    def finished(self) -> bool:
        return self.pending == 0 and not self.ingesting


def _job_status(job_id: str, raw: dict[bytes, bytes], tenant: str | None) -> JobStatus | None:
    """A job hash's fields as a ``JobStatus`` (None: no such job, or another tenant's)."""
    if not raw:
        return None
    data = {k.decode(): v.decode() for k, v in raw.items()}
    if tenant is not None and data["tenant"] != tenant:
        return None
    counts = {k: int(data.get(k, 0)) for k in ("total", *STATES, "reused")}
    return JobStatus(
        id=job_id, tenant=data["tenant"],
        status=_derive_status(counts, data.get("cancel_requested") == "1",
                              data.get("ingesting") == "1"),
        ingesting=data.get("ingesting") == "1",
        total=counts["total"], succeeded=counts["succeeded"], failed=counts["failed"],
        cancelled=counts["cancelled"], pending=counts["queued"] + counts["running"],
        reused=counts["reused"], created_at=float(data["created_at"]),
        updated_at=float(data["updated_at"]), options=json.loads(data.get("options", "{}")),
    )


def _derive_status(counts: dict[str, int], cancel_requested: bool, ingesting: bool) -> str:
    pending = counts["queued"] + counts["running"]
    if cancel_requested:
        return "cancelled"
    if pending or ingesting:
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
        self._start_script = client.register_script(_START_LUA)
        self._cancel_script = client.register_script(_CANCEL_QUEUED_LUA)
        self._hold_script = client.register_script(_HOLD_LUA)
        self._lock_renew_script = client.register_script(_LOCK_RENEW_LUA)
        self._lock_release_script = client.register_script(_LOCK_RELEASE_LUA)
        self._create_script = client.register_script(_CREATE_LUA)

    # -- keys ---------------------------------------------------------------------------
    @staticmethod
    def job_key(job_id: str) -> str:
        return f"df:job:{job_id}"

    @staticmethod
    def items_key(job_id: str) -> str:
        return f"df:job:{job_id}:items"

    @staticmethod
    def _tenant_key(tenant: str) -> str:
        return f"df:tenant:{tenant}:jobs"

    _TENANT_STATS_PREFIX = "df:tenant-stats:"

    @classmethod
    def _tenant_stats_key(cls, tenant: str) -> str:
        return cls._TENANT_STATS_PREFIX + tenant

    _LEASES = "df:leases"
    _STATS = "df:stats"

    # -- creation -----------------------------------------------------------------------
    def create_job(self, tenant: str, items: Iterable[NewItem], options: dict[str, Any],
                   ingesting: bool = False, idempotency_key: str | None = None) -> Created:
        """Store a job and its items; returns its id and the indexes to send.

        The caller sends tasks only after this returns, so a worker never sees an item that
        is not stored yet. With ``ingesting`` the job stays open for ``append_items`` (a
        bucket prefix or an archive expanded by a worker) until ``finish_ingest``.

        With an ``idempotency_key``, claiming the key and creating the job are one atomic
        step: of any number of concurrent identical requests exactly one creates the job,
        the others get it back (``existing``) and store nothing.
        """
        job_id, now = uuid.uuid4().hex, time.time()
        fields = {
            "tenant": tenant, "created_at": now, "updated_at": now,
            "options": _dumps(options), "total": 0, "stored": 0, "released": 0, "queued": 0,
            "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "reused": 0,
            "cancel_requested": 0, "ingesting": 1,
        }
        idem = self._idempotency_key(tenant, idempotency_key) if idempotency_key else ""
        created = self._create_script(
            keys=[self.job_key(job_id), self._tenant_key(tenant), idem or "df:idem:-"],
            args=[job_id, now, self.ttl, "1" if idem else "0",
                  *itertools.chain.from_iterable(fields.items())]).decode()
        if created != job_id:
            return Created(created, [], existing=True)
        queued = self.append_items(job_id, items)
        if not ingesting:
            self.finish_ingest(job_id)
        return Created(job_id, queued)

    @staticmethod
    def _idempotency_key(tenant: str, key: str) -> str:
        return f"df:idem:{tenant}:{hashlib.sha256(key.encode('utf-8', 'replace')).hexdigest()}"

    def append_items(self, job_id: str, items: Iterable[NewItem],
                     cursor: Callable[[int], str] | None = None) -> list[int]:
        """Add items after the job's last one, a chunk at a time; returns the queued indexes.

        ``cursor(n)`` (n: items of this call stored so far) is saved with each chunk in the
        same transaction, so an ingestion that is interrupted and run again knows exactly
        where to continue without adding any item twice. ``stored`` (the end of the last
        stored chunk) moves in that transaction too: nothing is released before it exists.
        """
        queued: list[int] = []
        stored = 0
        tenant = self._tenant_of(job_id)
        for chunk in chunked(items, WRITE_CHUNK):
            base = self.redis.hincrby(self.job_key(job_id), "next_index", len(chunk)) - len(chunk)
            records = [_new_record(base + i, item) for i, item in enumerate(chunk)]
            new_queued = [r["index"] for r in records if r["status"] == "queued"]
            pipe = self.redis.pipeline()
            pipe.hset(self.items_key(job_id), mapping={
                str(r["index"]): _dumps(r) for r in records})
            pipe.hincrby(self.job_key(job_id), "total", len(records))
            pipe.hset(self.job_key(job_id), "stored", base + len(records))
            pipe.hincrby(self.job_key(job_id), "queued", len(new_queued))
            pipe.hincrby(self.job_key(job_id), "failed", len(records) - len(new_queued))
            pipe.hincrby(self._STATS, "pending_items", len(new_queued))
            pipe.hincrby(self._tenant_stats_key(tenant), "pending_items", len(new_queued))
            pipe.expire(self.items_key(job_id), self.ttl)
            stored += len(records)
            if cursor is not None:
                pipe.hset(self.job_key(job_id), "ingest_cursor", cursor(stored))
            pipe.execute()
            queued += new_queued
        return queued

    def job_for_idempotency_key(self, tenant: str, key: str) -> str | None:
        """The job an earlier request with this ``Idempotency-Key`` created, if any."""
        found = self.redis.get(self._idempotency_key(tenant, key))
        return found.decode() if found else None

    def _tenant_of(self, job_id: str) -> str:
        tenant = self.redis.hget(self.job_key(job_id), "tenant")
        if tenant is None:
            raise KeyError(f"job {job_id} does not exist")
        return tenant.decode()

    def ingest_cursor(self, job_id: str) -> str | None:
        raw = self.redis.hget(self.job_key(job_id), "ingest_cursor")
        return raw.decode() if raw else None

    def _indexes_where(self, job_id: str, keep: Callable[[dict[str, Any]], bool]) -> list[int]:
        """Indexes of the items whose record passes ``keep``: a full scan, never the hot path."""
        return sorted(
            int(f) for f, raw in self.redis.hscan_iter(self.items_key(job_id), count=WRITE_CHUNK)
            if keep(json.loads(raw)))

    def queued_indexes(self, job_id: str) -> list[int]:
        """Every item still queued (for recovery)."""
        return self._indexes_where(job_id, lambda item: item["status"] == "queued")

    def finish_ingest(self, job_id: str) -> None:
        """Every item is stored: from now on the job can finish."""
        self.redis.hset(self.job_key(job_id), mapping={"ingesting": 0, "updated_at": time.time()})

    # -- reading ------------------------------------------------------------------------
    def status(self, job_id: str, tenant: str | None = None) -> JobStatus | None:
        """The job's status, or None if it does not exist or belongs to another tenant."""
        return _job_status(job_id, self.redis.hgetall(self.job_key(job_id)), tenant)

    def items(self, job_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
        """Item records ``offset .. offset+limit-1`` (fewer at the end)."""
        fields = [str(i) for i in range(offset, offset + limit)]
        if not fields:
            return []
        return [json.loads(raw) for raw in self.redis.hmget(self.items_key(job_id), fields) if raw]

    def item(self, job_id: str, index: int) -> dict[str, Any] | None:
        raw = self.redis.hget(self.items_key(job_id), str(index))
        return json.loads(raw) if raw else None

    def iter_items(self, job_id: str, total: int, page: int = 500) -> Iterator[dict[str, Any]]:
        """Every item in index order, one page in memory at a time (manifest streaming)."""
        for offset in range(0, total, page):
            yield from self.items(job_id, offset, page)

    def tenant_jobs(self, tenant: str, limit: int = 50) -> list[str]:
        return [j.decode() for j in self.redis.zrevrange(self._tenant_key(tenant), 0, limit - 1)]

    def job_page(self, tenant: str, limit: int,
                 after: JobCursor | None = None) -> tuple[list[JobStatus], JobCursor | None]:
        """The tenant's jobs newest first, ``limit`` of them after ``after``, and the cursor of
        the next page (None: this is the last).

        O(log n + limit) on the tenant's job list (``create_job`` adds each job to it in the
        step that records the job). Jobs whose records expired are dropped from the list as
        a page meets them, so each costs one look once, and never shows.
        """
        found: list[JobStatus] = []
        expired: list[str] = []
        for batch in self._ids_after(tenant, after, max(limit + 1, 16)):
            pipe = self.redis.pipeline(transaction=False)
            for job_id, _ in batch:
                pipe.hgetall(self.job_key(job_id))
            for (job_id, _), raw in zip(batch, pipe.execute()):
                status = _job_status(job_id, raw, tenant)
                if status is None:
                    expired.append(job_id)
                elif len(found) <= limit:
                    found.append(status)
            if len(found) > limit:
                break
        if expired:  # after the scan: removing members shifts the offsets it pages by
            self.redis.zrem(self._tenant_key(tenant), *expired)
        if len(found) <= limit:
            return found, None
        last = found[limit - 1]
        return found[:limit], JobCursor(last.created_at, last.id)

    def _ids_after(self, tenant: str, after: JobCursor | None,
                   batch: int) -> Iterator[list[tuple[str, float]]]:
        """Batches of (job id, created_at) of the tenant's list, newest first, after ``after``.

        Jobs created in the same instant are ordered by id (descending, like ``ZREVRANGE``),
        so a cursor never skips nor repeats one.
        """
        key, offset = self._tenant_key(tenant), 0
        high: float | str = "+inf" if after is None else after.created_at
        while True:
            page = self.redis.zrevrangebyscore(key, high, "-inf", start=offset, num=batch,
                                               withscores=True)
            yield [(member.decode(), score) for member, score in page
                   if after is None or after.precedes(score, member.decode())]
            if len(page) < batch:
                return
            offset += batch

    # -- the tenant's upload index (POST /v1/uploads/check without a storage lookup) -------
    @staticmethod
    def _uploads_key(tenant: str) -> str:
        return f"df:tenant:{tenant}:uploads"

    def remember_uploads(self, tenant: str, digests: list[str]) -> None:
        """These digests' bytes are stored for the tenant (as of now)."""
        if digests:
            pipe = self.redis.pipeline()
            pipe.zadd(self._uploads_key(tenant), {d: time.time() for d in digests})
            pipe.expire(self._uploads_key(tenant), self.ttl)
            pipe.execute()

    def known_uploads(self, tenant: str, digests: list[str]) -> set[str]:
        """Which of ``digests`` the tenant stored within the job TTL: one Redis call for up
        to thousands of digests. A digest not known here may still be stored; its ``PUT``
        then finds it and stores nothing."""
        if not digests:
            return set()
        cutoff = time.time() - self.ttl
        scores = self.redis.zmscore(self._uploads_key(tenant), digests)
        return {d for d, score in zip(digests, scores) if score is not None and score > cutoff}

    def released(self, job_id: str) -> int:
        """How many of the job's items the fair share has sent (``shared.fairshare``)."""
        return int(self.redis.hget(self.job_key(job_id), "released") or 0)

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self.job_key(job_id), "cancel_requested") == b"1"

    def pending_items(self, tenant: str | None = None) -> int:
        """Items queued or running: the whole fleet's, or one tenant's (backpressure)."""
        key = self._STATS if tenant is None else self._tenant_stats_key(tenant)
        return int(self.redis.hget(key, "pending_items") or 0)

    # -- transitions --------------------------------------------------------------------
    def _item_script(self, script: Any, job_id: str, index: int, lease_seconds: float,
                     *args: Any) -> Any:
        """Run one of the item scripts (``_MOVE_LUA``'s keys and first arguments, then ``args``)."""
        now = time.time()
        return script(
            keys=[self.job_key(job_id), self.items_key(job_id), self._LEASES, self._STATS],
            args=[str(index), now, now + lease_seconds, f"{job_id}:{index}", self.ttl,
                  self._TENANT_STATS_PREFIX, *args])

    def _transition(self, job_id: str, index: int, allowed: tuple[str, ...], new: str,
                    patch: dict[str, Any] | None = None) -> bool:
        return self._item_script(self._transition_script, job_id, index, 0,
                                 ",".join(allowed), new, _dumps(patch or {})) == 1

    def begin_item(self, job_id: str, index: int, lease_seconds: float) -> ItemStart:
        """An item's start in one round trip: queued (or running with a lapsed lease: a
        redelivered task) -> running, leased, its record returned; if the job is cancelled,
        a queued item is cancelled instead. A finished item is left alone."""
        reply = self._item_script(self._start_script, job_id, index, lease_seconds)
        outcome = reply[0].decode()
        if outcome == "started":
            return ItemStart(item=json.loads(reply[1]))
        return ItemStart(cancelled=outcome == "cancelled")

    def succeed_item(self, job_id: str, index: int, result: dict[str, Any]) -> bool:
        return self._transition(job_id, index, ("queued", "running"), "succeeded",
                                {**result, "error": None, "finished_at": time.time()})

    def fail_item(self, job_id: str, index: int, code: str, message: str, final: bool) -> bool:
        """Mark failed; ``final`` errors (bad input) are not requeued by a job retry."""
        error = {"code": code, "message": message}
        return self._transition(job_id, index, ("queued", "running"), "failed",
                                {"error": error, "retryable": not final, "finished_at": time.time()})

    def requeue_item(self, job_id: str, index: int) -> bool:
        """failed (retryable) -> queued, for ``POST /v1/jobs/{id}/retry``."""
        item = self.item(job_id, index)
        if not item or item["status"] != "failed" or not item.get("retryable"):
            return False
        return self._transition(job_id, index, ("failed",), "queued", {"error": None})

    def cancel_job(self, job_id: str) -> int:
        """Flag the job cancelled and cancel every item not yet started; returns how many.

        Items are cancelled a listing page at a time by one script call, so a 100,000-item
        job is cancelled in about a hundred round trips; tasks still in the queue then find
        their items terminal and finish at once.
        """
        tenant = self._tenant_of(job_id)
        self.redis.hset(self.job_key(job_id), "cancel_requested", 1)
        cancelled, cursor = 0, 0
        while True:
            cursor, page = self.redis.hscan(self.items_key(job_id), cursor, count=WRITE_CHUNK)
            if page:
                cancelled += self._cancel_script(
                    keys=[self.job_key(job_id), self.items_key(job_id), self._STATS,
                          self._tenant_stats_key(tenant)],
                    args=list(page))
            if cursor == 0:
                return cancelled

    def retryable_indexes(self, job_id: str) -> list[int]:
        """Items failed for a transient reason (what ``POST .../retry`` requeues)."""
        return self._indexes_where(
            job_id, lambda item: item["status"] == "failed" and bool(item.get("retryable")))

    # -- leases and recovery (worker.leases renews, worker.reaper reclaims) ---------------
    def expired_leases(self, now: float | None = None, limit: int = 1000) -> list[tuple[str, int]]:
        """Running items whose worker stopped renewing (vanished): candidates for requeue."""
        members = self.redis.zrangebyscore(self._LEASES, "-inf", now or time.time(), 0, limit)
        return [(m.decode().rsplit(":", 1)[0], int(m.decode().rsplit(":", 1)[1])) for m in members]

    def hold_items(self, job_id: str, indexes: list[int], seconds: float) -> int:
        """Lease the items of a task that are still pending for ``seconds`` more (never less).

        A task holds all its items while it runs (its pool process renews them), and keeps
        them through a retry's countdown, so the reaper leaves them alone; if the process
        dies, the leases lapse and the reaper sends the items again. Returns how many.
        """
        return int(self._hold(job_id, indexes, seconds, read_job=False))

    def open_task(self, job_id: str, indexes: list[int], seconds: float) -> JobStatus | None:
        """A task's first step in one round trip: ``hold_items``, then the job's status
        (None: the job is gone)."""
        flat = self._hold(job_id, indexes, seconds, read_job=True)
        return _job_status(job_id, dict(zip(flat[::2], flat[1::2])), None)

    def _hold(self, job_id: str, indexes: list[int], seconds: float, read_job: bool) -> Any:
        return self._hold_script(
            keys=[self.items_key(job_id), self._LEASES, self.job_key(job_id)],
            args=[job_id, time.time() + seconds, "1" if read_job else "0", *indexes])

    def release_item(self, job_id: str, index: int) -> bool:
        """running -> queued: a worker gives the item back (a transient fault; a retry follows)."""
        return self._transition(job_id, index, ("running",), "queued")

    def reclaim_item(self, job_id: str, index: int, now: float | None = None) -> bool:
        """Whether an item whose lease lapsed needs a new task (running ones go back to queued).

        The lease is checked again first, so an item renewed meanwhile stays where it is; a
        lapsed lease is dropped whatever the item's state (finished items need nothing).
        """
        member, now = f"{job_id}:{index}", now or time.time()
        expiry = self.redis.zscore(self._LEASES, member)
        if expiry is None or expiry > now:
            return False
        if self._transition(job_id, index, ("running",), "queued", {"reclaimed_at": now}):
            self.count("items_reclaimed")
            return True
        self.redis.zrem(self._LEASES, member)
        item = self.item(job_id, index)
        return item is not None and item["status"] == "queued"

    def unleased_queued_indexes(self, job_id: str) -> list[int]:
        """Queued items no live task holds: nothing will process them unless they are sent."""
        queued = self.queued_indexes(job_id)
        if not queued:
            return []
        expiries = self.redis.zmscore(self._LEASES, [f"{job_id}:{i}" for i in queued])
        now = time.time()
        return [i for i, expiry in zip(queued, expiries) if expiry is None or expiry <= now]

    def stale_jobs_with_queued_items(self, idle_seconds: float) -> Iterator[str]:
        """Jobs holding queued items that nothing changed for ``idle_seconds``.

        A full scan of job keys: for recovery when the broker holds no message at all but
        items still wait (their tasks were lost), never for the hot path.
        """
        cutoff = time.time() - idle_seconds
        for key in self.redis.scan_iter(match=self.job_key("*"), count=WRITE_CHUNK, _type="hash"):
            name = key.decode()
            if name.endswith(":items"):
                continue
            queued, updated_at = self.redis.hmget(name, "queued", "updated_at")
            if int(queued or 0) > 0 and float(updated_at or 0) < cutoff:
                yield name.removeprefix(self.job_key(""))

    # -- locks --------------------------------------------------------------------------
    def acquire_lock(self, name: str, seconds: float) -> Lock | None:
        """Become the one holder of ``name`` (e.g. the process computing a result), or None.

        The lock lapses ``seconds`` after its last renewal, so a holder that dies delays the
        others by at most that long.
        """
        lock = Lock(self, f"df:lock:{name}", uuid.uuid4().hex, seconds)
        return lock if self.redis.set(lock.key, lock.token, nx=True, px=lock.millis) else None

    def lock_held(self, name: str) -> bool:
        return bool(self.redis.exists(f"df:lock:{name}"))

    def count(self, stat: str, amount: int = 1) -> None:
        """Bump a global counter (model runs, uploads stored or repeated...)."""
        self.redis.hincrby(self._STATS, stat, amount)

    def stat(self, stat: str) -> int:
        return int(self.redis.hget(self._STATS, stat) or 0)

    def count_model_run(self) -> None:
        self.count("model_runs")

    def model_runs(self) -> int:
        return self.stat("model_runs")


@dataclass(eq=False)
class Lock:
    """A lock this process holds: renew it while working, release it when done.

    Hashed by identity (``eq=False``), so a holder can keep its locks in a set.
    """

    store: JobStore
    key: str
    token: str
    seconds: float

    @property
    def millis(self) -> int:
        return int(self.seconds * 1000)

    def renew(self) -> bool:
        """False if the lock lapsed and someone else may hold it now."""
        return bool(self.store._lock_renew_script(keys=[self.key],
                                                  args=[self.token, self.millis]))

    def release(self) -> None:
        self.store._lock_release_script(keys=[self.key], args=[self.token])


def chunked(items: Iterable[NewItem], size: int) -> Iterator[list[NewItem]]:
    """Lists of up to ``size`` items, holding one list in memory at a time."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _new_record(index: int, item: NewItem) -> dict[str, Any]:
    return {
        "index": index, "name": item.name,  # made valid Unicode by _dumps, like every string
        "raw_name": item.raw_name.hex() if item.raw_name is not None else None,
        "status": "failed" if item.error else "queued",
        "source": item.source, "sha256": item.sha256, "size": item.size,
        "error": item.error, "retryable": False, "width": None, "height": None,
        "depth_min": None, "depth_max": None, "artifacts": {}, "reused": False,
    }


def _clean(value: Any) -> Any:
    """``value`` with every string made valid Unicode (see ``_dumps``)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    """JSON that Redis's cjson always decodes: a lone surrogate (a name from a Latin-1 tar,
    an exception message quoting it) would make every script touching the record fail."""
    return json.dumps(_clean(value), separators=(",", ":"))


def connect(redis_url: str) -> redis.Redis:
    """A Redis client with timeouts and retries suited to a service that must ride out restarts."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )

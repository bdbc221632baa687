"""Fair share of the fleet: each tenant keeps only a small window of tasks in the broker.

Celery's queue is first in, first out: a tenant who submits 20,000 photos would put 2,500
tasks ahead of everyone else's. Instead, a job's items are *released* into the broker a task
at a time, and each tenant has at most ``window`` released tasks that have not finished yet.
A finishing task releases the next one, taken in turn from the tenant's jobs (a ring), so:

- a tenant alone keeps every worker process busy (the window is about two tasks per live
  worker process, as the workers announce themselves here);
- another tenant's first task waits behind at most the windows of the tenants already
  there, not behind their backlogs: about one task per busy worker process;
- jobs of one tenant are served in turn too.

Items not yet released are still ``queued`` in the job store (counted, cancellable); the
release cursor (``released`` in the job hash) says how many of a job's items were sent, and
it never passes ``stored``, the end of the job's last stored chunk of items (an index range:
an ingestion that died after taking indexes but before storing them leaves a gap that
``total``, a count, would not show).
Nothing here can lose an item: a released task that is lost leaves its token until it
lapses (the window then opens again), and the reaper's sweeps resend items whose tasks are
gone (``worker.reaper``).

Keys (besides the job hash fields ``stored``, ``released`` and ``ingesting``):
  df:share:tenants           set    tenants whose ring is not empty
  df:share:{t}:ring          list   the tenant's job ids with items left to release
  df:share:{t}:inflight      zset   "{job}:{first index}" -> lapse time of released tasks
  df:fleet                   zset   worker name -> heartbeat expiry
(both times by Redis's clock, ``TIME``: hosts' clocks may disagree by minutes)
  df:fleet:processes         hash   worker name -> pool processes
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis

from depthfleet.shared.jobs import SERVER_NOW_LUA, JobStore

TAIL_TASKS = 4  # a job's last 4 tasks' worth of items go one per task: no idle worker at the end
MIN_WINDOW = 2
WINDOW_PER_PROCESS = 2
FLEET_CACHE_SECONDS = 5.0

# Release up to the tenant's free window, taking jobs from its ring in turn.
# KEYS: ring, inflight, tenants set. ARGV: window, per task, tail tasks, token lapse seconds,
# job key prefix, tenant. Token lapse times are by Redis's clock.
# Returns a flat list: job id, first index, count, job id, first index, count, ...
_RELEASE_LUA = SERVER_NOW_LUA + """
local ring, inflight = KEYS[1], KEYS[2]
local window, per_task, tail = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now, lapse, prefix = server_now(), tonumber(ARGV[4]), ARGV[5]
redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
local free = window - redis.call('ZCARD', inflight)
if window < 0 then free = 1e9 end
local out = {}
local idle = 0
while free > 0 do
  local n = redis.call('LLEN', ring)
  if n == 0 or idle >= n then break end
  local job = redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
  local key = prefix .. job
  local fields = redis.call('HMGET', key, 'stored', 'released', 'ingesting', 'cancel_requested')
  local stored, released = tonumber(fields[1] or '0'), tonumber(fields[2] or '0')
  local left = stored - released
  if fields[1] == false or fields[4] == '1' or (left <= 0 and fields[3] ~= '1') then
    redis.call('LREM', ring, -1, job)  -- finished releasing (or gone, or cancelled)
  elseif left <= 0 then
    idle = idle + 1  -- still ingesting: more items will come
  else
    local size = per_task
    if left <= tail * per_task and fields[3] ~= '1' then size = 1 end
    if size > left then size = left end
    redis.call('HSET', key, 'released', released + size)
    redis.call('ZADD', inflight, now + lapse, job .. ':' .. released)
    table.insert(out, job)
    table.insert(out, released)
    table.insert(out, size)
    free = free - 1
    idle = 0
  end
end
if redis.call('LLEN', ring) == 0 then redis.call('SREM', KEYS[3], ARGV[6]) end
return out
"""


@dataclass(frozen=True)
class Release:
    """A released task: items ``first .. first+count-1`` of ``job_id``, and its token."""

    job_id: str
    first: int
    count: int

    @property
    def indexes(self) -> list[int]:
        return list(range(self.first, self.first + self.count))

    @property
    def token(self) -> str:
        return f"{self.job_id}:{self.first}"


class FairShare:
    """Releases jobs' items into the broker, a bounded window per tenant."""

    _TENANTS = "df:share:tenants"
    _FLEET = "df:fleet"
    _FLEET_PROCESSES = "df:fleet:processes"

    def __init__(self, store: JobStore, window: int, per_task: int, lapse_seconds: float) -> None:
        """``window``: tasks per tenant (0: automatic from the live fleet, -1: unbounded)."""
        self.store = store
        self.redis: redis.Redis = store.redis
        self.window = window
        self.per_task = per_task
        self.lapse_seconds = lapse_seconds
        self._release_script = self.redis.register_script(_RELEASE_LUA)
        self._fleet_cache: tuple[float, int] = (0.0, 0)

    @staticmethod
    def _ring(tenant: str) -> str:
        return f"df:share:{tenant}:ring"

    @staticmethod
    def _inflight(tenant: str) -> str:
        return f"df:share:{tenant}:inflight"

    # -- jobs ---------------------------------------------------------------------------
    def add_job(self, tenant: str, job_id: str) -> None:
        """Put a stored job in its tenant's ring (once); call ``release`` next."""
        pipe = self.redis.pipeline()
        pipe.lrem(self._ring(tenant), 0, job_id)
        pipe.rpush(self._ring(tenant), job_id)
        pipe.sadd(self._TENANTS, tenant)
        pipe.execute()

    def release(self, tenant: str) -> list[Release]:
        """Release as many tasks as the tenant's window has room for (the caller sends them)."""
        flat = self._release_script(
            keys=[self._ring(tenant), self._inflight(tenant), self._TENANTS],
            args=[self.effective_window(), self.per_task, TAIL_TASKS,
                  self.lapse_seconds, JobStore.job_key(""), tenant])
        return [Release(flat[i].decode(), int(flat[i + 1]), int(flat[i + 2]))
                for i in range(0, len(flat), 3)]

    def finished(self, tenant: str, token: str) -> None:
        """A released task is done (or gave up): its slot in the window is free again."""
        self.redis.zrem(self._inflight(tenant), token)

    def forget_job(self, tenant: str, job_id: str) -> int:
        """Drop the job's tokens (its tasks are known lost); returns how many were dropped."""
        return self._drop(tenant, [f"{job_id}:{first}" for first in self._firsts(tenant, job_id)])

    def forget_tasks(self, tenant: str, job_id: str, indexes: list[int]) -> int:
        """Drop the tokens of the job's released tasks that held ``indexes``, items whose
        leases lapsed: their host is gone (or cut off), and so are their window slots. Kept,
        they would hold the tenant's window for 10 lease periods while the hosts left idle.
        A task holds the items from its token's first index on."""
        firsts = self._firsts(tenant, job_id)
        held = {max(f for f in firsts if f <= i) for i in indexes if firsts and firsts[0] <= i}
        return self._drop(tenant, [f"{job_id}:{first}" for first in held])

    def _firsts(self, tenant: str, job_id: str) -> list[int]:
        """First indexes of the job's released tasks still in flight, in order."""
        tokens = self.redis.zrange(self._inflight(tenant), 0, -1)
        pairs = (token.decode().rsplit(":", 1) for token in tokens)
        return sorted(int(first) for job, first in pairs if job == job_id)

    def _drop(self, tenant: str, tokens: list[str]) -> int:
        return int(self.redis.zrem(self._inflight(tenant), *tokens)) if tokens else 0

    def tenants(self) -> list[str]:
        """Tenants that still have items to release."""
        return sorted(t.decode() for t in self.redis.smembers(self._TENANTS))

    # -- the fleet ----------------------------------------------------------------------
    def heartbeat(self, worker: str, processes: int, ttl_seconds: float) -> None:
        """A worker announces its pool size until ``ttl_seconds`` from now (Redis's clock)."""
        expiry = self.store.server_time() + ttl_seconds
        pipe = self.redis.pipeline()
        pipe.zadd(self._FLEET, {worker: expiry})
        pipe.hset(self._FLEET_PROCESSES, worker, processes)
        pipe.execute()

    def leave(self, worker: str) -> None:
        pipe = self.redis.pipeline()
        pipe.zrem(self._FLEET, worker)
        pipe.hdel(self._FLEET_PROCESSES, worker)
        pipe.execute()

    def live_processes(self) -> int:
        """Pool processes of the workers whose heartbeat has not lapsed (cached a few s)."""
        cached_at, value = self._fleet_cache
        if time.monotonic() - cached_at < FLEET_CACHE_SECONDS:
            return value
        live = self.redis.zrangebyscore(self._FLEET, self.store.server_time(), "+inf")
        counts = self.redis.hmget(self._FLEET_PROCESSES, live) if live else []
        value = sum(int(c or 0) for c in counts)
        self._fleet_cache = (time.monotonic(), value)
        return value

    def effective_window(self) -> int:
        if self.window != 0:
            return self.window
        return max(MIN_WINDOW, math.ceil(WINDOW_PER_PROCESS * self.live_processes()))

"""Every DepthFleet setting, read from ``DEPTHFLEET_*`` environment variables in one place.

Nothing else in the code base reads the environment: components receive a ``Settings``
object, which keeps tests hermetic (build one with ``Settings.from_env({...})``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

OFFICIAL_WEIGHTS_URL = (
    "https://github.com/isl-org/MiDaS/releases/download/v2_1/midas_v21_small_256.pt"
)
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_UPLOAD_MB = 1024
BACKENDS = ("onnxruntime", "ncnn", "torch")  # all fp32 and exact; see shared.model.backends


class SettingsError(ValueError):
    """A ``DEPTHFLEET_*`` variable holds a value we cannot use."""


def _int(env: Mapping[str, str], name: str, default: int | None, minimum: int = 1) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw not in ("", "0", "1", "false", "true", "no", "yes"):
        raise SettingsError(f"{name}={raw!r} must be 1 or 0")
    return raw in ("1", "true", "yes")


def _window(env: Mapping[str, str], name: str) -> int:
    """``auto`` (0: from the live fleet), ``off`` (-1: no fair share) or a number of tasks."""
    raw = env.get(name, "").strip().lower()
    if raw in ("", "auto"):
        return 0
    if raw == "off":
        return -1
    value = _int(env, name, 0)
    return value or 0


def _public_url(raw: str) -> str | None:
    raw = raw.strip().rstrip("/")
    if raw and not raw.startswith(("http://", "https://")):
        raise SettingsError("DEPTHFLEET_PUBLIC_URL must start with http:// or https://")
    return raw or None


def _api_keys(raw: str) -> dict[str, str]:
    """Parse ``tenant:key,tenant:key`` into ``{key: tenant}``."""
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        tenant, sep, key = pair.partition(":")
        if not sep or not tenant or not key:
            raise SettingsError("DEPTHFLEET_API_KEYS must look like 'tenant:key,tenant:key'")
        if not tenant.replace("-", "").replace("_", "").isalnum():
            raise SettingsError(f"tenant name {tenant!r} may hold only letters, digits, - and _")
        keys[key] = tenant
    return keys


def _tenant_sources(raw: str) -> dict[str, tuple[str, ...]]:
    """Parse ``tenant=s3://bucket/prefix/|s3://other/;tenant2=...`` into allowed source prefixes."""
    sources: dict[str, tuple[str, ...]] = {}
    for entry in filter(None, (e.strip() for e in raw.split(";"))):
        tenant, sep, prefixes = entry.partition("=")
        if not sep:
            raise SettingsError("DEPTHFLEET_TENANT_SOURCES must look like 'tenant=s3://b/p/|s3://b2/'")
        sources[tenant.strip()] = tuple(p.strip() for p in prefixes.split("|") if p.strip())
    return sources


@dataclass(frozen=True)
class Settings:
    """Typed view of the environment; see CONTRACT.md and the README's settings table."""

    redis_url: str | None = None
    storage_url: str | None = None
    s3_endpoint: str | None = None
    s3_public_endpoint: str | None = None
    public_url: str | None = None  # the API's own base URL for absolute links (else see api.links)
    weights: str = OFFICIAL_WEIGHTS_URL
    weights_sha256: str | None = None
    threads: int | None = None
    api_keys: Mapping[str, str] = field(default_factory=dict)
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    cache_dir: Path = Path.home() / ".cache" / "depthfleet"
    backend: str = "onnxruntime"
    precision: str = "fp32"  # "bf16": OpenVINO bf16, ~2x faster model, ~1e-2 of range off parity
    fast_decode: bool = False  # big JPEGs decoded at 1/2 DCT scale for the network: ~1e-2 off
    max_queued_items: int = 1_000_000  # the whole fleet's pending items: Redis memory's guard
    tenant_max_queued_items: int = 250_000  # one tenant's pending items; over it: 429
    tenant_window: int = 0  # tasks per tenant in the broker: 0 auto (2 per live process), -1 off
    max_entry_mb: int = 64  # largest file inside an archive, inflated (held in worker memory)
    max_archive_inflated_mb: int = 16_384  # bytes one archive may inflate to, in all
    max_archive_entries: int = 250_000
    archive_cpu_seconds: int = 600  # CPU one archive expansion may take
    job_ttl_days: int = 30
    presign_seconds: int = 300
    render_threads: int = 1  # per API process: full-size renders on read at once
    render_cache_days: int = 7  # renders on read are kept this long under cache/
    items_per_task: int = 8
    task_time_limit: int = 900
    visibility_timeout: int = 3600
    lease_seconds: int = 60
    storage_retries: int = 8
    concurrency: int | None = None
    worker_memory_mb: int = 320  # a pool process returns free heap memory above this; 0: never
    tenant_sources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    log_level: str = "INFO"
    metrics_port: int = 9808  # worker metrics and health server; 0: none
    client_api_key: str | None = None
    link_secret: str | None = None  # signs download links (api.links); unset: from the API keys
    link_seconds: int = 3600  # how long a signed download link lasts (at least)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``); raises ``SettingsError``."""
        env = os.environ if env is None else env
        base = cls()
        sha = env.get("DEPTHFLEET_WEIGHTS_SHA256", "").strip().lower() or None
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise SettingsError("DEPTHFLEET_WEIGHTS_SHA256 must be 64 hex digits")
        backend = env.get("DEPTHFLEET_BACKEND", base.backend).strip().lower()
        if backend not in BACKENDS:
            raise SettingsError("DEPTHFLEET_BACKEND must be 'onnxruntime', 'ncnn' or 'torch'")
        precision = env.get("DEPTHFLEET_PRECISION", base.precision).strip().lower()
        if precision not in ("fp32", "bf16"):
            raise SettingsError("DEPTHFLEET_PRECISION must be 'fp32' or 'bf16'")
        return cls(
            redis_url=env.get("DEPTHFLEET_REDIS_URL", "").strip() or None,
            storage_url=env.get("DEPTHFLEET_STORAGE_URL", "").strip() or None,
            s3_endpoint=env.get("DEPTHFLEET_S3_ENDPOINT", "").strip() or None,
            s3_public_endpoint=env.get("DEPTHFLEET_S3_PUBLIC_ENDPOINT", "").strip() or None,
            public_url=_public_url(env.get("DEPTHFLEET_PUBLIC_URL", "")),
            weights=env.get("DEPTHFLEET_WEIGHTS", "").strip() or base.weights,
            weights_sha256=sha,
            threads=_int(env, "DEPTHFLEET_THREADS", None),
            api_keys=_api_keys(env.get("DEPTHFLEET_API_KEYS", "")),
            max_upload_mb=_int(env, "DEPTHFLEET_MAX_UPLOAD_MB", base.max_upload_mb),
            max_pixels=_int(env, "DEPTHFLEET_MAX_PIXELS", base.max_pixels),
            cache_dir=Path(env.get("DEPTHFLEET_CACHE_DIR", "").strip() or base.cache_dir),
            backend=backend,
            precision=precision,
            fast_decode=_flag(env, "DEPTHFLEET_FAST_DECODE"),
            max_queued_items=_int(env, "DEPTHFLEET_MAX_QUEUED_ITEMS", base.max_queued_items),
            tenant_max_queued_items=_int(env, "DEPTHFLEET_TENANT_MAX_QUEUED_ITEMS",
                                         base.tenant_max_queued_items),
            tenant_window=_window(env, "DEPTHFLEET_TENANT_WINDOW"),
            max_entry_mb=_int(env, "DEPTHFLEET_MAX_ENTRY_MB", base.max_entry_mb),
            max_archive_inflated_mb=_int(env, "DEPTHFLEET_MAX_ARCHIVE_INFLATED_MB",
                                         base.max_archive_inflated_mb),
            max_archive_entries=_int(env, "DEPTHFLEET_MAX_ARCHIVE_ENTRIES",
                                     base.max_archive_entries),
            archive_cpu_seconds=_int(env, "DEPTHFLEET_ARCHIVE_CPU_SECONDS",
                                     base.archive_cpu_seconds),
            job_ttl_days=_int(env, "DEPTHFLEET_JOB_TTL_DAYS", base.job_ttl_days),
            presign_seconds=_int(env, "DEPTHFLEET_PRESIGN_SECONDS", base.presign_seconds, 10),
            render_threads=_int(env, "DEPTHFLEET_RENDER_THREADS", base.render_threads),
            render_cache_days=_int(env, "DEPTHFLEET_RENDER_CACHE_DAYS", base.render_cache_days),
            items_per_task=_int(env, "DEPTHFLEET_ITEMS_PER_TASK", base.items_per_task),
            task_time_limit=_int(env, "DEPTHFLEET_TASK_TIME_LIMIT", base.task_time_limit, 10),
            visibility_timeout=_int(env, "DEPTHFLEET_VISIBILITY_TIMEOUT", base.visibility_timeout, 10),
            lease_seconds=_int(env, "DEPTHFLEET_LEASE_SECONDS", base.lease_seconds, 3),
            storage_retries=_int(env, "DEPTHFLEET_STORAGE_RETRIES", base.storage_retries, 0),
            concurrency=_int(env, "DEPTHFLEET_CONCURRENCY", None),
            worker_memory_mb=_int(env, "DEPTHFLEET_WORKER_MEMORY_MB", base.worker_memory_mb, 0),
            tenant_sources=_tenant_sources(env.get("DEPTHFLEET_TENANT_SOURCES", "")),
            log_level=env.get("DEPTHFLEET_LOG_LEVEL", base.log_level).strip().upper(),
            metrics_port=_int(env, "DEPTHFLEET_METRICS_PORT", base.metrics_port, 0),
            client_api_key=env.get("DEPTHFLEET_API_KEY", "").strip() or None,
            link_secret=env.get("DEPTHFLEET_LINK_SECRET", "").strip() or None,
            link_seconds=_int(env, "DEPTHFLEET_LINK_SECONDS", base.link_seconds, 60),
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (for the CLI's embedded defaults and tests)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

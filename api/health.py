"""Liveness, readiness and Prometheus metrics: what orchestrators and scrapers ask."""

from __future__ import annotations

from flask import Blueprint, Response

from depthfleet.api import metrics as api_metrics
from depthfleet.api import services
from depthfleet.api.errors import error_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive (no dependency checks: a Redis outage must not restart the API)."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> Response | dict[str, object]:
    """Ready only when Redis and storage answer, so a load balancer routes around trouble."""
    checks: dict[str, str] = {}
    for name, check in (("redis", lambda: services.store().redis.ping()),
                        ("storage", lambda: services.storage().ping())):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # any failure means not ready; say which and why
            checks[name] = f"error: {type(exc).__name__}"
    if any(v != "ok" for v in checks.values()):
        response = error_response("not_ready", f"dependencies failing: {checks}", 503)
        return response
    return {"status": "ready", "checks": checks}


@bp.get("/metrics")
def metrics() -> Response:
    """Every gunicorn worker's series (multiprocess mode), queue depth, process memory."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(api_metrics.render(), mimetype=CONTENT_TYPE_LATEST)

"""The HTTP API: a thin Flask app in front of storage, the job store and the task queue.

``create_app`` builds it from a ``Settings`` object; each resource has its own blueprint and
reaches Redis, storage and Celery only through ``services``.
"""

from __future__ import annotations

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from depthfleet.shared.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Application factory (gunicorn: ``depthfleet.api:create_app()``)."""
    from depthfleet.api import auth, errors, health, jobs, metrics, openapi, services, uploads, web

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = 1 << 20  # text fields only; files spool to disk
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False  # bodies keep the order the code builds them in
    services.init_app(app, settings)
    metrics.init_app(app)  # first: times every request, even those auth refuses
    errors.init_app(app)
    auth.init_app(app)
    for blueprint in (health.bp, jobs.bp, uploads.bp, web.bp, openapi.bp):
        app.register_blueprint(blueprint)
    return app

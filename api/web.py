"""The web page: upload photos, see each beside its depth heatmap, follow a batch.

The page is plain HTML, CSS and JavaScript modules from ``static/``: no build step and nothing
from another origin, so it works offline. It talks to ``/v1`` with ``fetch`` like any client.
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template

from depthfleet.api import services
from depthfleet.shared.reasons import SENTENCES

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")

# Only this origin; artifacts are shown from blob: URLs, the favicon is a data: URI.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")


@bp.get("/")
def index() -> Response:
    settings = services.settings()
    page = render_template("index.html", keys_required=bool(settings.api_keys),
                           max_upload_bytes=settings.max_upload_bytes, reasons=SENTENCES)
    return Response(page, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                   "Referrer-Policy": "no-referrer"})

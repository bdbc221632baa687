"""The web page: upload photos, see each beside its depth heatmap, follow a batch."""

from __future__ import annotations

from flask import Blueprint, render_template

from depthfleet.api import services

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")


@bp.get("/")
def index() -> str:
    return render_template("index.html", keys_required=bool(services.settings().api_keys))

"""``GET /v1/openapi.json``: the API described in OpenAPI 3.1, for codegen, docs and clients.

The document is ``openapi.yaml`` beside this module, written by hand: our request parsing and
error answers are our own (bounded JSON, spooled uploads, one error shape), which the schema
libraries that generate documents (flask-smorest, spectree) would replace, and apispec's Flask
plugin only collects YAML from view docstrings. ``tests/test_openapi.py`` keeps the file and
``create_app().url_map`` in step and validates real answers against its schemas.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint

bp = Blueprint("openapi", __name__)
SOURCE = Path(__file__).with_name("openapi.yaml")


@functools.cache
def document() -> dict[str, Any]:
    """The parsed document, with the installed package's version."""
    doc: dict[str, Any] = yaml.safe_load(SOURCE.read_text())
    try:
        doc["info"]["version"] = importlib.metadata.version("depthfleet")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        pass
    return doc


@bp.get("/v1/openapi.json")
def openapi_json() -> dict[str, Any]:
    return document()

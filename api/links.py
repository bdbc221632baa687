"""Absolute links in responses, never built from a ``Host`` header an attacker chose.

With ``DEPTHFLEET_PUBLIC_URL`` set, every link starts with it. Without it, a request that
came to a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``: ``depthfleet run`` and
local use) gets links on that name, and any other ``Host`` gets root-relative links, which
clients resolve against the URL they called.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import request, url_for

from depthfleet.api import services
from depthfleet.api.auth import is_loopback
from depthfleet.api.signing import signature_query


def external(endpoint: str, **values: Any) -> str:
    """``url_for(endpoint, **values)`` made absolute on a trusted base, or left relative."""
    return _base() + url_for(endpoint, **values)


def _base() -> str:
    public = services.settings().public_url
    if public:
        return public.rstrip("/")
    if _is_loopback_host(request.host):
        return request.host_url.rstrip("/")
    return ""


def _is_loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    return name == "localhost" or is_loopback(name)


def signed(endpoint: str, tenant: str, **values: Any) -> str:
    """``external(endpoint)`` that opens without an API key until it expires (``signing``)."""
    path = url_for(endpoint, **values)
    query = signature_query(tenant, path)
    return f"{_base()}{path}" + (f"?{urlencode(query)}" if query else "")

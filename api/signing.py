"""Signed links: an artifact or a results.zip that opens without an ``Authorization`` header.

An ``<a href>`` or ``<img src>`` cannot send the API key, so the API hands out links that
carry ``tenant``, ``expires`` and ``sig`` (HMAC-SHA256 over the three and the path, with a
server secret). ``auth`` accepts such a link, on these routes only, as the tenant it names,
until it expires. Query values it does not cover (``download``, ``max_side``, ``inline``)
only change how the same bytes are sent.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from flask import request

from depthfleet.api import services
from depthfleet.shared.errors import DepthFleetError

SIGNED_ENDPOINTS = frozenset({"jobs.artifact", "jobs.results_zip"})


class LinkError(DepthFleetError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, 401)


def signature_query(tenant: str, path: str) -> dict[str, str] | None:
    """The query that signs ``path`` for ``tenant`` (None without API keys: loopback only,
    where plain links work).

    Expiry is rounded up to a quarter of ``DEPTHFLEET_LINK_SECONDS``, so a page polling its
    items gets the same URLs (the browser's cache keeps working) and each lasts between 1
    and 1.25 times that.
    """
    key = _link_key()
    if key is None:
        return None
    seconds = services.settings().link_seconds
    step = max(1, seconds // 4)
    expires = -(-(int(time.time()) + seconds) // step) * step
    return {"tenant": tenant, "expires": str(expires),
            "sig": _signature(key, tenant, path, expires)}


def signed_tenant() -> str | None:
    """The tenant a signed link in this request names (None: not a signed link; the caller
    must authenticate). Raises ``LinkError`` for a link that is altered or expired."""
    if "sig" not in request.args or request.endpoint not in SIGNED_ENDPOINTS:
        return None
    key = _link_key()
    tenant, expires = request.args.get("tenant", ""), request.args.get("expires", "")
    valid = key is not None and expires.isascii() and expires.isdigit() and len(expires) < 16
    if not valid or not hmac.compare_digest(_signature(key, tenant, request.path, int(expires)),
                                            request.args.get("sig", "")):
        raise LinkError("invalid_link", "this link is not valid; ask the API for a new one")
    if int(expires) < time.time():
        raise LinkError("link_expired", "this link has expired (links last "
                        "DEPTHFLEET_LINK_SECONDS); reload the page for a new one")
    return tenant


def _signature(key: bytes, tenant: str, path: str, expires: int) -> str:
    message = f"{tenant}\n{path}\n{expires}".encode("utf-8", "replace")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _link_key() -> bytes | None:
    """``DEPTHFLEET_LINK_SECRET``, else a key drawn from every API key: the same in every API
    process, and no tenant knows the others' keys, so none can forge another's links."""
    settings = services.settings()
    if settings.link_secret:
        return settings.link_secret.encode()
    if not settings.api_keys:
        return None
    return hashlib.sha256("\0".join(["depthfleet-links", *sorted(settings.api_keys)])
                          .encode()).digest()

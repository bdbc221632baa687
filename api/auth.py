"""Who is calling: a tenant from a bearer key, or ``local`` for keyless loopback clients.

With ``DEPTHFLEET_API_KEYS`` unset the API serves only loopback clients, so a forgotten
setting never exposes it. Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from flask import Flask, g, request

from depthfleet.api import services
from depthfleet.api.signing import signed_tenant
from depthfleet.shared.errors import DepthFleetError
from depthfleet.shared.sources import LOCAL_TENANT

PUBLIC_ENDPOINTS = {"health.healthz", "health.readyz", "health.metrics", "web.index", "static",
                    "web.static"}


class AuthError(DepthFleetError):
    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(code, message, status)


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def tenant_for_key(keys: dict[str, str], presented: str) -> str | None:
    """Compare against every key so timing does not reveal which (or whether one) matched.

    Digests are compared rather than the keys themselves, so every comparison covers the
    same 32 bytes whatever the length of the key that was sent.
    """
    offered = hashlib.sha256(presented.encode()).digest()
    found = None
    for key, tenant in keys.items():
        if hmac.compare_digest(hashlib.sha256(key.encode()).digest(), offered):
            found = tenant
    return found


def resolve_tenant() -> str:
    keys = dict(services.settings().api_keys)
    if not keys:
        if not is_loopback(request.remote_addr):
            raise AuthError("forbidden", "anonymous access is only allowed from loopback; "
                            "set DEPTHFLEET_API_KEYS to serve other clients", 403)
        return LOCAL_TENANT
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if not scheme:
        tenant = signed_tenant()  # an <a href> to an artifact or a results.zip
        if tenant is not None:
            return tenant
    if scheme.lower() != "bearer" or not presented.strip():
        raise AuthError("missing_api_key", "send 'Authorization: Bearer <API key>'")
    tenant = tenant_for_key(keys, presented.strip())
    if tenant is None:
        raise AuthError("invalid_api_key", "the API key is not valid")
    return tenant


def current_tenant() -> str:
    return g.tenant


def init_app(app: Flask) -> None:
    @app.before_request
    def _authenticate() -> None:
        if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
            return
        g.tenant = resolve_tenant()

"""Refuse state-changing requests sent from another origin (CSRF defence beside SameSite).

A browser names the page's origin in `Origin` on every cross-origin request and on same-origin
POST/PUT/PATCH/DELETE. Such a request is let through when that origin is this server's own
(scheme, host and port all equal: the request's scheme and `Host`; a page served over http
is not the https site, and cookies without `Secure` would leak to it) or one of CORS_ORIGINS,
the front ends allowed to call the API with credentials; any other origin, `null` included
(sandboxed frames, some redirects), gets 403 before a session is even looked up. A request
without `Origin` is not a browser's cross-site request (curl, YooKassa's webhooks) and passes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str | None:
    """`scheme://host[:port]` lower-cased with a default port dropped; None if not an origin."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        host += f":{port}"
    return f"{parts.scheme}://{host}"


def _request_origin(scope: Scope) -> str | None:
    """This request's own origin: its scheme (behind a TLS proxy, what the proxy headers
    middleware set) and its `Host`, normalised like any origin."""
    scheme = scope.get("scheme", "http")
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return normalize_origin(f"{scheme}://{value.decode('latin-1').strip()}")
    return None


class OriginCheck:
    def __init__(self, app: ASGIApp, *, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {o for o in map(normalize_origin, allowed_origins) if o is not None}

    def allows(self, scope: Scope) -> bool:
        if scope.get("method", "GET") in SAFE_METHODS:
            return True
        origins = [v for n, v in scope.get("headers", ()) if n == b"origin"]
        if not origins:
            return True
        if len(origins) > 1:
            return False
        origin = normalize_origin(origins[0].decode("latin-1"))
        if origin is None:
            return False  # "null", or not an origin at all
        return origin in self.allowed or origin == _request_origin(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allows(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Cross-origin request refused",
                "status": 403,
                "detail": "This origin may not change state here; add it to CORS_ORIGINS "
                "if it is one of your front ends.",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

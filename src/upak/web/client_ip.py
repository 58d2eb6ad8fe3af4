"""Who is calling: the client IP, believing X-Forwarded-For only from trusted proxies.

uvicorn's ProxyHeadersMiddleware does the walk (`trusted_proxy_headers`): from a peer in
TRUSTED_PROXIES, the client is the right-most X-Forwarded-For address that is not a trusted
proxy, and it rewrites the scope's `client`, so everything after it, uvicorn's access log
included, sees the real client. A header from a peer that is not a trusted proxy is
ignored, so nobody can choose their own rate-limit key or pass for YooKassa by sending one.
What it lacks is kept here: IPv4-mapped IPv6 addresses (::ffff:1.2.3.4, what a dual-stack
socket reports) count as their IPv4 address, for trust and for the caller.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Scope
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IPAddress | None:
    """An address, with IPv4-mapped IPv6 (::ffff:1.2.3.4) counted as its IPv4 address."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1 and "." in text:  # "1.2.3.4:443"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def trusted_hosts(networks: Sequence[Network]) -> list[str]:
    """uvicorn's trusted hosts for `networks`: each, and beside an IPv4 network its
    IPv4-mapped twin (10.0.0.0/8 -> ::ffff:10.0.0.0/104), which uvicorn would not match."""
    hosts = []
    for net in networks:
        hosts.append(str(net))
        if net.version == 4:
            hosts.append(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
    return hosts


def trusted_proxy_headers(app: ASGIApp, trusted_proxies: Sequence[Network]) -> Any:
    """`app` behind uvicorn's ProxyHeadersMiddleware for `trusted_proxies` (add it outermost:
    `app.add_middleware(trusted_proxy_headers, trusted_proxies=...)`)."""
    return ProxyHeadersMiddleware(app, trusted_hosts=trusted_hosts(trusted_proxies))  # type: ignore[arg-type]


def client_ip(scope: Scope) -> IPAddress | None:
    """The calling client's address, as the proxy-headers middleware left it in the scope;
    None when it is unknown or not an IP (a malformed X-Forwarded-For hop)."""
    peer = scope.get("client")
    return parse_ip(peer[0]) if peer else None

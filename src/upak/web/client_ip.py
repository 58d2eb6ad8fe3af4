"""Who is calling: the client IP, believing X-Forwarded-For only from trusted proxies.

The client is the right-most X-Forwarded-For address that is not a trusted proxy, walking
back from the socket peer; a header from a peer that is not a trusted proxy is ignored, so
nobody can choose their own rate-limit key or pass for YooKassa by sending a header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import Scope

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


def is_in(address: IPAddress, networks: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_ip(scope: Scope, trusted_proxies: Sequence[Network]) -> IPAddress | None:
    """The calling client's address, or None when the socket peer is unknown or not an IP."""
    peer = scope.get("client")
    address = parse_ip(peer[0]) if peer else None
    if address is None or not trusted_proxies or not is_in(address, trusted_proxies):
        return address
    forwarded: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            forwarded.extend(value.decode("latin-1").split(","))
    for hop in reversed(forwarded):
        hop_address = parse_ip(hop)
        if hop_address is None:
            # A malformed hop: what lies left of it cannot be trusted either.
            return address
        address = hop_address
        if not is_in(address, trusted_proxies):
            return address
    return address

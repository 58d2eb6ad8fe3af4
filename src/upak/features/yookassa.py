"""YooKassa notifications: who may send them, and what makes two of them the same delivery.

YooKassa signs nothing, so the sender is authenticated by its source address against the
networks YooKassa publishes (the list the `yookassa` SDK's `SecurityHelper` checks, copied
here so the service does not import the SDK at run time; a test keeps the two in step).
YOOKASSA_ALLOWED_IPS replaces the list, e.g. for a sandbox or a test.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from upak.config import Network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# yookassa.domain.common.security_helper.SecurityHelper.YOOKASSA_NETWORKS (SDK 3.x)
YOOKASSA_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "77.75.153.0/25",
        "77.75.156.11",
        "77.75.156.35",
        "77.75.154.128/25",
        "185.71.76.0/27",
        "185.71.77.0/27",
        "2a02:5180:0:1509::/64",
        "2a02:5180:0:2655::/64",
        "2a02:5180:0:1533::/64",
        "2a02:5180:0:2669::/64",
    )
)


def allowed_networks(override: Sequence[Network] | None) -> tuple[Network, ...]:
    """YOOKASSA_ALLOWED_IPS (Settings holds it parsed) when it names any network, else
    YooKassa's published networks."""
    if not override:
        return YOOKASSA_NETWORKS
    return tuple(override)


def is_yookassa(address: IPAddress | None, networks: Sequence[Network]) -> bool:
    # The caller resolves the client (upak.web.client_ip), IPv4-mapped IPv6 included.
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)


def delivery_key(event: str, object_id: str, status: str) -> str:
    """YooKassa has no delivery id: the same event about the same object in the same status
    is the same notification, however many times it is sent."""
    return f"{event}\x1f{object_id}\x1f{status}"

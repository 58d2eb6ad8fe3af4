"""`GET /health` and `GET /metrics`: read from memory, so they answer while Redis hangs.

`/health` says two things to anyone: `status` and `store` (a load balancer needs no more).
The details (where Redis is, the worker pid, the store's last error and counters) are for
the host itself: a caller whose address is in HEALTH_DETAIL_NETWORKS (default: loopback)
and whose request came straight to us (no X-Forwarded-For or Forwarded header: behind a
reverse proxy on the same host every request comes from loopback, but carries one of those).
`upak redis monitor`, the suite and the benches ask from the host. `health_details` builds the
full answer; `public_health` keeps the anonymous part; a new field goes into the first and is
shown to strangers only if it is named in PUBLIC_FIELDS.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Scope

from upak.store import Mode
from upak.web.client_ip import client_ip
from upak.web.metrics import CONTENT_TYPE_LATEST
from upak.web.schemas import Health
from upak.web.services import Services

router = APIRouter(tags=["health"])

PUBLIC_FIELDS = ("status", "store")
_FORWARDING_HEADERS = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})


def health_details(services: Services) -> dict[str, Any]:
    """Everything /health knows (from memory: the heartbeat keeps `stats` current)."""
    stats = services.store.stats
    database = services.db_availability  # kept current by its own background check
    return {
        "status": "ok" if stats.mode is Mode.REDIS and not database.down else "degraded",
        **database.as_dict(),
        "store": str(stats.mode),
        "redis": services.settings.redis.redacted_url(),
        "worker": os.getpid(),  # which worker process answered (multi-worker checks)
        **{k: v for k, v in stats.as_dict().items() if k != "mode"},
        # Redis Cluster: each master's slot range, its node and its own breaker's state.
        **({"nodes": stats.nodes()} if hasattr(stats, "nodes") else {}),
    }


def public_health(details: dict[str, Any]) -> dict[str, Any]:
    """What anyone may read: the status and the store mode, nothing about the internals."""
    return {name: details[name] for name in PUBLIC_FIELDS if name in details}


def is_internal(scope: Scope, services: Services) -> bool:
    """A direct call from the host (or HEALTH_DETAIL_NETWORKS), not one relayed by a proxy."""
    if any(name in _FORWARDING_HEADERS for name, _ in scope.get("headers", ())):
        return False
    address = client_ip(scope)
    networks = services.settings.health_detail_networks
    return address is not None and any(address in network for network in networks)


@router.get("/health", response_model=Health, response_model_exclude_unset=True)
async def health(request: Request) -> dict[str, Any]:
    services: Services = request.app.state.services
    details = health_details(services)
    return details if is_internal(request.scope, services) else public_health(details)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    # All workers' values (multiprocess mode) or this process's; never a call to Redis.
    return Response(request.app.state.services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

"""`GET /health` and `GET /metrics`: read from memory, so they answer while Redis hangs."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from upak.store import Mode
from upak.web.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health(request: Request) -> dict[str, Any]:
    services = request.app.state.services
    stats = services.store.stats
    # The heartbeat keeps `stats` current without traffic; reading it never touches Redis.
    return {
        "status": "ok" if stats.mode is Mode.REDIS else "degraded",
        "store": str(stats.mode),
        "redis": services.settings.redis.redacted_url(),
        "worker": os.getpid(),  # which worker process answered (multi-worker checks)
        **{k: v for k, v in stats.as_dict().items() if k != "mode"},
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    registry = request.app.state.services.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

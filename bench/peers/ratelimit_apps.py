"""The three servers bench/ratelimit.py compares: one route, one app, three ways of limiting.

`uvicorn bench.peers.ratelimit_apps:ours --factory` and so on. All three are the full UPAK
app from `create_app` with the same `GET /items`; they differ only in the limiter:
  ours       our middleware (RATE_LIMIT_DEFAULT keyed by the forwarded client IP);
  unlimited  RATE_LIMIT_ENABLED=false;
  slowapi    RATE_LIMIT_ENABLED=false plus slowapi's decorator on the route, moving window
             on Redis (its storage is the blocking redis-py client), keyed the same way.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from upak.config import load_settings
from upak.web.app import create_app

LIMIT = os.environ.get("RATE_LIMIT_DEFAULT", "1000/minute")
ITEMS = {"items": [{"id": n, "name": f"item {n}"} for n in range(5)]}


def _app(**overrides: object) -> FastAPI:
    # As `upak serve` builds it (the start-up heap frozen), for all three alike.
    return create_app(load_settings(env_file=None, **overrides), freeze_startup_heap=True)


def ours() -> FastAPI:
    app = _app()

    @app.get("/items")
    async def items() -> JSONResponse:
        return JSONResponse(ITEMS)

    return app


def unlimited() -> FastAPI:
    app = _app(rate_limit_enabled=False)

    @app.get("/items")
    async def items() -> JSONResponse:
        return JSONResponse(ITEMS)

    return app


def slowapi() -> FastAPI:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded

    def forwarded_client(request: Request) -> str:
        # The same identity our middleware uses behind a trusted proxy.
        forwarded = request.headers.get("x-forwarded-for", "")
        return forwarded.split(",")[-1].strip() or (request.client.host if request.client else "")

    limiter = Limiter(
        key_func=forwarded_client,
        storage_uri=os.environ["REDIS_URL"],
        strategy="moving-window",
        headers_enabled=False,
    )
    app = _app(rate_limit_enabled=False)
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.get("/items")
    @limiter.limit(LIMIT)
    async def items(request: Request) -> JSONResponse:
        return JSONResponse(ITEMS)

    return app

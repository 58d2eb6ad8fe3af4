"""The few GETs every client repeats, found by one dict lookup and answered as raw ASGI.

FastAPI's router finds a route by asking every included router, and each of its routes, in
turn (15 `matches` calls for `/me`, the last router's), then solves the route's
dependencies and builds Starlette's Request and Response: more than half of what a cached
`GET /me` cost. A hot route skips all of that. Its FastAPI route stays declared exactly as it
was (`app.routes`, the OpenAPI schema, 405s with their Allow); anything that is not a GET of
a hot path exactly goes on to FastAPI as before.

`HotRoutes` is the innermost middleware (inside `HeadAsGet`, so a HEAD is answered as its
GET, and inside everything that limits or resolves a request). That is outside FastAPI's own
exception middleware, so it answers what a hot endpoint raises (401's HTTPException, a
StoreError, DatabaseUnavailable) itself, with the app's handler for it, looked up as
Starlette's exception middleware looks it up: the same answer as from any route. A hot
endpoint returns its answer rather than sending it, so an exception is always raised before
anything was sent, and the answer goes out after.

A hot route's store read does not wait for its turn: `HotReads.start`, run by the session
middleware just before the session lookup, starts it (`scope[PREFETCHED]`) so that it
travels to Redis in the same write as the lookup and is answered while the rate limiter
decides; the endpoint then finds it done. A per-user read (`GET /me`) is started for the
user the session cookie names, before the session is confirmed: its endpoint uses it only
for the user the confirmed session is of, and a cookie that names no live session gets its
401 as before (its read dropped). Nothing is sent before the limiter admits (the endpoint
answers from it, inside the limiter), and a refused request's read is dropped uncounted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette._utils import get_route_path, is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from upak.web.http_cache import Answer

HotEndpoint = Callable[[Scope], Awaitable[Answer]]
# Where a hot route's early read is left for its endpoint (`HotReads`): (the user id the
# session cookie named, or None; the read).
PREFETCHED = "upak.hot.prefetched"
Prefetched = tuple[int | None, Any]


class HotReads:
    """The reads of hot routes, by path, each started by a callable given the user id the
    session cookie names (None without one); it may return None (nothing to read)."""

    def __init__(self, reads: Mapping[str, Callable[[int | None], object]]) -> None:
        self.reads = dict(reads)

    def start(self, scope: Scope, user_id: int | None) -> None:
        """Start this request's read if it is a GET (or HEAD, answered as the GET) of one."""
        if scope["method"] in ("GET", "HEAD"):
            read = self.reads.get(get_route_path(scope))
            if read is not None:
                started = read(user_id)
                if started is not None:
                    scope[PREFETCHED] = (user_id, started)


class HotRoutes:
    """`app` with `routes` (path -> its declared route and its endpoint) answered first."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        fastapi: FastAPI,
        routes: Mapping[str, tuple[BaseRoute, HotEndpoint]],
    ) -> None:
        self.app = app
        self.fastapi = fastapi
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            hot = self.routes.get(get_route_path(scope))
            if hot is not None:
                # What the router would have left in the scope: HttpMetrics labels by the
                # route's template, url_for needs the router.
                route, endpoint = hot
                scope["route"] = route
                scope["path_params"] = {}
                scope.setdefault("router", self.fastapi.router)
                try:
                    status, headers, body = await endpoint(scope)
                except Exception as exc:
                    await self._handle(exc, scope, receive, send)
                    return
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    async def _handle(self, exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handler_for(exc)
        if handler is None:
            raise exc  # ServerErrorMiddleware's 500, as for any route
        request = Request(scope, receive, send)
        if is_async_callable(handler):
            response = await handler(request, exc)
        else:
            response = await run_in_threadpool(handler, request, exc)
        if response is not None:
            await response(scope, receive, send)
        exc.__traceback__ = None  # as Starlette does: reused exceptions keep no traceback

    def _handler_for(self, exc: Exception) -> Callable[..., Any] | None:
        # Starlette's lookup over what FastAPI gives its exception middleware (every handler
        # but 500/Exception's, which ServerErrorMiddleware, outside us, uses): a status code's
        # handler for an HTTPException first, then the nearest class in the exception's MRO.
        # Read per failure, not per request: handlers added after start-up count too.
        handlers = self.fastapi.exception_handlers
        status = exc.status_code if isinstance(exc, HTTPException) else None
        if status is not None and status != 500 and status in handlers:
            return handlers[status]
        for cls in type(exc).__mro__:
            if cls in handlers and cls is not Exception:
                return handlers[cls]
        return None


def install_hot_routes(app: FastAPI, endpoints: Mapping[str, HotEndpoint]) -> None:
    """Answer `GET path` with `endpoints[path]` ahead of FastAPI's routing. Call before adding
    any other middleware: this one must be the innermost.

    Each path must be a declared static GET route of `app` (its declaration stays the
    documented one); a path that is not is a programming error, raised now.
    """
    declared: dict[str, BaseRoute] = {}
    for context in iter_route_contexts(app.routes):
        if "GET" in (context.methods or ()) and context.path is not None:
            declared.setdefault(context.path, context.original_route)
    routes = {}
    for path, endpoint in endpoints.items():
        if path not in declared or "{" in path:
            raise ValueError(f"hot route {path!r} is not a declared static GET route")
        routes[path] = (declared[path], endpoint)
    if app.user_middleware:
        raise ValueError("install hot routes before any other middleware (innermost)")
    app.add_middleware(HotRoutes, fastapi=app, routes=routes)

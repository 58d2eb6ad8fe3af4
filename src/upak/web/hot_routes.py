"""The few GETs every client repeats, found by one dict lookup and answered as raw ASGI.

FastAPI's router finds a route by asking every included router, and each of its routes, in
turn (15 `matches` calls for `/me`, the last router's), then solves the route's
dependencies and builds Starlette's Request and Response: more than half of what a cached
`GET /me` cost. A hot route skips all of that. Its FastAPI route stays declared exactly as it
was (`app.routes`, the OpenAPI schema, 405s with their Allow); anything that is not a GET of
a hot path exactly goes on to FastAPI as before.

`HotRoutes` is the innermost middleware (inside `HeadAsGet`, so a HEAD is answered as its
GET, and inside everything that limits or resolves a request). That is outside FastAPI's own
exception middleware, so a hot endpoint runs under a Starlette `ExceptionMiddleware` of its
own, built from the app's exception handlers the way FastAPI builds its: what a hot endpoint
raises (401's HTTPException, a StoreError, DatabaseUnavailable) gets the same answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette._utils import get_route_path
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

HotEndpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


class HotRoutes:
    """`app` with `routes` (path -> its declared route and its raw endpoint) answered first."""

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
        self._handled: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            hot = self.routes.get(get_route_path(scope))
            if hot is not None:
                # What the router would have left in the scope: HttpMetrics labels by the
                # route's template, url_for needs the router.
                scope["route"] = hot[0]
                scope["path_params"] = {}
                scope.setdefault("router", self.fastapi.router)
                await (self._handled or self._with_handlers())(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.routes[get_route_path(scope)][1](scope, receive, send)

    def _with_handlers(self) -> ASGIApp:
        # Built at the first hot request, as Starlette builds its middleware stack at the
        # first request: handlers added until then count. FastAPI gives its exception
        # middleware every handler but 500/Exception's (those go to ServerErrorMiddleware,
        # outside us, for hot routes as for the rest).
        handlers = {
            key: handler
            for key, handler in self.fastapi.exception_handlers.items()
            if key not in (500, Exception)
        }
        self._handled = ExceptionMiddleware(
            self._dispatch, handlers=handlers, debug=self.fastapi.debug
        )
        return self._handled


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

"""The few GETs every client repeats, found by one dict lookup and answered as raw ASGI.

FastAPI's router finds a route by asking every included router, and each of its routes, in
turn (15 `matches` calls for `/me`, the last router's), then solves the route's
dependencies and builds Starlette's Request and Response: more than half of what a cached
`GET /me` cost. A hot route skips all of that. Its FastAPI route stays declared exactly as it
was (`app.routes`, the OpenAPI schema, 405s with their Allow, HEAD through `HeadAsGet`); this
sits in front of the router, inside FastAPI's exception middleware, so what a hot endpoint
raises (401's HTTPException, a StoreError, DatabaseUnavailable) is answered by the same
handlers as any route's. Anything that is not a GET of a hot path exactly goes on to the
router as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette._utils import get_route_path
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

HotEndpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


class HotRoutes:
    """`app` (the router) with `routes` (path -> its declared route and its raw endpoint)
    answered first."""

    def __init__(
        self, app: ASGIApp, router: ASGIApp, routes: Mapping[str, tuple[BaseRoute, HotEndpoint]]
    ) -> None:
        self.app = app
        self.router = router
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            hot = self.routes.get(get_route_path(scope))
            if hot is not None:
                route, endpoint = hot
                # What the router would have left in the scope: HttpMetrics labels by the
                # route's template, url_for needs the router.
                scope["route"] = route
                scope["path_params"] = {}
                scope.setdefault("router", self.router)
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_hot_routes(app: FastAPI, endpoints: Mapping[str, HotEndpoint]) -> None:
    """Answer `GET path` with `endpoints[path]` before FastAPI's routing.

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
    router = app.router
    # Starlette's Router calls `middleware_stack` (itself, unless router-level middleware
    # was given): the hot routes go in front of it, inside the app's exception handling.
    router.middleware_stack = HotRoutes(router.middleware_stack, router, routes)

"""Count and time every HTTP request by its route template (`/auth/sessions/{session_id}`).

Own rather than starlette-exporter or prometheus-fastapi-instrumentator: both find the
template by matching the request against every route again, while the router has already
put the matched route in the scope; bench/http_metrics.py measures the three.

The app counts through `RequestGuard` (upak.web.middleware.guard), which does this in the
same frame as the body limit and the store-error answer; `HttpMetrics` is the same count as
a middleware of its own (the form bench/http_metrics.py compares).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from upak.web.metrics import Metrics

UNMATCHED = "unmatched"  # 404s: one label value, whatever paths clients try


def route_template(scope: Scope) -> str:
    """The matched route's template, which the router put on the shared scope."""
    return getattr(scope.get("route"), "path", UNMATCHED)


class HttpMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(
                route_template(scope),
                scope["method"],
                status,
                time.perf_counter() - started,
            )

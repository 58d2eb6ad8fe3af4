"""The outermost layer of the request path: what every request's answer must be.

Three jobs, each of which watches for the response's start, in one frame and one send
wrapper (they were three middlewares, each wrapping `send`):
* the HTTP metrics: every request counted and timed by its route template, with the status
  the client got (`upak.web.middleware.http_metrics`);
* the store-error answer: a StoreError escaping any layer inside is a 503 problem, never a
  500, unless half a response is already out (`upak.web.middleware.store_errors`);
* the body limit: a Content-Length over the limit is refused at once, a body that grows past
  it mid-stream is refused (413) if nothing was answered yet, and a client that hangs up
  mid-body ends quietly (`upak.web.middleware.body_limit`).
Refusals and the 503 go out through the same wrapper, so the metrics count them too.

That wrapper is also the one place a layer inside adds header fields to the answer: it leaves
them in `scope[RESPONSE_HEADERS]` (the rate limiter's RateLimit fields, once it admitted the
request) and they are appended to whatever answer starts, after its own fields, instead of
each such layer wrapping `send` again. The guard's own refusal and 503 do not carry them.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from upak.store import StoreError
from upak.web.metrics import Metrics
from upak.web.middleware.body_limit import (
    DEFAULT_LIMIT,
    BodyTooLarge,
    content_length_refusal,
    limited_receive,
    refuse,
)
from upak.web.middleware.http_metrics import route_template
from upak.web.middleware.store_errors import answer_store_error

log = logging.getLogger("upak.web")

# Header fields a layer inside wants appended to the answer (a list of (name, value) pairs).
RESPONSE_HEADERS = "upak.response_headers"


class RequestGuard:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, limit: int = DEFAULT_LIMIT) -> None:
        self.app = app
        self.metrics = metrics
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                extra = scope.get(RESPONSE_HEADERS)
                if extra is not None:
                    message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            refusal = content_length_refusal(scope, self.limit)
            if refusal is not None:
                await refuse(watching_send, refusal, self.limit)
                return
            try:
                await self.app(scope, limited_receive(receive, self.limit), watching_send)
            except BodyTooLarge:
                if not started:
                    scope.pop(RESPONSE_HEADERS, None)  # the guard's own answer
                    await refuse(watching_send, 413, self.limit)
            except ClientDisconnect:
                log.debug("client went away mid-request: %s %s", scope["method"], scope["path"])
            except StoreError as exc:
                if started:
                    raise  # half a response is out: nothing left to answer with
                scope.pop(RESPONSE_HEADERS, None)  # the guard's own answer
                await answer_store_error(scope, receive, watching_send, exc)
        finally:
            self.metrics.observe_request(
                route_template(scope), scope["method"], status, time.perf_counter() - started_at
            )

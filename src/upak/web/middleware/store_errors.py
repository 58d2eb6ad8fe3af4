"""A store error escaping any layer is a 503 problem+json, never a 500.

Routes have FastAPI's exception handler for `StoreError` (`upak.web.problems`), but the pure
ASGI middlewares (sessions, rate limiting) run outside it: without this guard a programming
error there (WRONGTYPE on a key something else wrote, a cross-slot script, NOSCRIPT after its
retry) would reach Starlette's error middleware and answer 500. Server conditions never get
here: the FailoverStore serves them from memory.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from upak.store import StoreError
from upak.web.problems import store_problem

log = logging.getLogger("upak.web")


class StoreErrorGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except StoreError as exc:
            if started:
                raise  # half a response is out: nothing left to answer with
            log.error("store error on %s %s: %s", scope["method"], scope["path"], exc)
            await store_problem()(scope, receive, send)

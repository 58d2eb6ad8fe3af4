"""A store error escaping any layer is a 503 problem+json, never a 500.

Routes have FastAPI's exception handler for `StoreError` (`upak.web.problems`), but the pure
ASGI middlewares (sessions, rate limiting) run outside it: without this answer a programming
error there (WRONGTYPE on a key something else wrote, a cross-slot script, NOSCRIPT after its
retry) would reach Starlette's error middleware and answer 500. Server conditions never get
here: the FailoverStore serves them from memory. `RequestGuard`
(upak.web.middleware.guard), the outermost layer, catches the error and calls this.
"""

from __future__ import annotations

import logging

from starlette.types import Receive, Scope, Send

from upak.store import StoreError
from upak.web.problems import store_problem

log = logging.getLogger("upak.web")


async def answer_store_error(scope: Scope, receive: Receive, send: Send, exc: StoreError) -> None:
    """Log the error (its message names no secret) and answer 503 with Retry-After."""
    log.error("store error on %s %s: %s", scope["method"], scope["path"], exc)
    await store_problem()(scope, receive, send)

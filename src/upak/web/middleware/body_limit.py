"""Refuse request bodies over a size limit with 413, before anything reads them whole.

Being the outermost reader of bodies, this is also where a client that hangs up mid-body ends
quietly: there is nobody left to answer, so Starlette's ClientDisconnect is one debug line,
not the "Exception in ASGI application" traceback the server would log.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_LIMIT = 64 * 1024
log = logging.getLogger("upak.web")


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, limit: int = DEFAULT_LIMIT) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse(send, 413 if value.isdigit() else 400)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, 413)
        except ClientDisconnect:
            log.debug("client went away mid-request: %s %s", scope["method"], scope["path"])

    async def _refuse(self, send: Send, status: int) -> None:
        title = "Request body too large" if status == 413 else "Invalid Content-Length"
        detail = f"The body may be at most {self.limit} bytes." if status == 413 else None
        body = {"type": "about:blank", "title": title, "status": status}
        if detail:
            body["detail"] = detail
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

"""HEAD on every GET resource: the GET's status and headers, no body (RFC 9110 §9.3.2).

Starlette's own routes answer HEAD for GET; FastAPI's routes do not (a 405). Rather than
doubling every route, the router sees the request as a GET and this drops the body it
writes; the headers, Content-Length and ETag included, stay those of the GET. Everything
outside (origin check, sessions, rate limits, logs) still sees a HEAD, a safe method.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the rest of a streamed body: nothing to send for HEAD
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)

"""Refuse request bodies over a size limit with 413, before anything reads them whole.

Being the outermost reader of bodies, this is also where a client that hangs up mid-body ends
quietly: there is nobody left to answer, so Starlette's ClientDisconnect is one debug line,
not the "Exception in ASGI application" traceback the server would log.

The pieces are applied by `RequestGuard` (upak.web.middleware.guard), the outermost layer,
which shares one send wrapper between this, the store-error answer and the HTTP metrics.
"""

from __future__ import annotations

import json

from starlette.types import Message, Receive, Scope, Send

DEFAULT_LIMIT = 64 * 1024


class BodyTooLarge(Exception):
    """Raised by `limited_receive` once the body has passed the limit."""


def content_length_refusal(scope: Scope, limit: int) -> int | None:
    """413 for a Content-Length over `limit`, 400 for one that is not a number, else None."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and (not value.isdigit() or int(value) > limit):
            return 413 if value.isdigit() else 400
    return None


def limited_receive(receive: Receive, limit: int) -> Receive:
    """`receive`, raising BodyTooLarge once more than `limit` body bytes have come."""
    received = 0

    async def receive_within_limit() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge
        return message

    return receive_within_limit


async def refuse(send: Send, status: int, limit: int) -> None:
    """The 413 (or 400 for a bad Content-Length) problem, closing the connection."""
    title = "Request body too large" if status == 413 else "Invalid Content-Length"
    detail = f"The body may be at most {limit} bytes." if status == 413 else None
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

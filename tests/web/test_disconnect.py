"""A client that hangs up mid-body ends quietly: no exception out of the app, no error log."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import pytest

from tests.conftest import make_settings
from upak.domain.passwords import fast_passwords_for_tests
from upak.web.app import create_app

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize("path", ["/webhooks/upak", "/webhooks/yookassa", "/auth/login"])
async def test_disconnect_mid_body_is_quiet(path: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(webhook_secret=SECRET, yookassa_allowed_ips="127.0.0.1/32")
    app = create_app(settings, passwords=fast_passwords_for_tests())
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"event": "payment.succ', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(60)  # never reached: nothing reads past the disconnect
        raise AssertionError

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    async with app.router.lifespan_context(app):
        with caplog.at_level(logging.INFO):
            await asyncio.wait_for(app(scope, receive, send), timeout=10)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert all(r.exc_info is None for r in caplog.records)

"""The client behind TRUSTED_PROXIES: uvicorn's walk, plus IPv4-mapped addresses."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Request

from tests.conftest import make_settings
from tests.support.redis_servers import free_port
from upak.web.app import create_app
from upak.web.client_ip import client_ip


def app_with_whoami(trusted: str) -> Any:
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", trusted_proxies=trusted
    )
    app = create_app(settings)

    async def whoami(request: Request) -> dict[str, str]:
        return {"ip": str(client_ip(request.scope))}

    app.add_api_route("/whoami", whoami)
    return app


async def who(app: Any, peer: str, forwarded: str | None) -> str:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return (await client.get("/whoami", headers=headers)).json()["ip"]


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        ("", "203.0.113.9", "198.51.100.1", "203.0.113.9"),  # no proxies: header ignored
        ("10.0.0.0/8", "203.0.113.9", "198.51.100.1", "203.0.113.9"),  # peer not a proxy
        ("10.0.0.0/8", "10.0.0.5", "198.51.100.1", "198.51.100.1"),
        # A dual-stack socket reports the proxy as ::ffff:10.0.0.5: still the trusted proxy.
        ("10.0.0.0/8", "::ffff:10.0.0.5", "198.51.100.1", "198.51.100.1"),
        # A mapped proxy hop is skipped like its IPv4 form; a mapped client is its IPv4.
        ("127.0.0.1, 10.0.0.0/8", "127.0.0.1", "198.51.100.1, ::ffff:10.1.2.3", "198.51.100.1"),
        ("127.0.0.1", "127.0.0.1", "::ffff:198.51.100.1", "198.51.100.1"),
        # Prepending addresses does not help: the right-most untrusted hop is the client.
        ("127.0.0.1", "127.0.0.1", "1.1.1.1, 198.51.100.1", "198.51.100.1"),
        ("127.0.0.1", "127.0.0.1", "garbage", "None"),  # not an address: no client IP
        ("::1", "::1", "2001:db8::7", "2001:db8::7"),
    ],
)
async def test_client_ip_behind_trusted_proxies(trusted, peer, forwarded, client):
    assert await who(app_with_whoami(trusted), peer, forwarded) == client


async def test_the_server_sees_the_real_client_for_its_access_log():
    """uvicorn logs the `client` of the scope it passed in, after the app answered."""
    app = app_with_whoami("10.0.0.0/8")
    passed: list[dict[str, Any]] = []

    async def server_side(scope: dict[str, Any], receive: Any, send: Any) -> None:
        passed.append(scope)  # the server's own dict, as uvicorn keeps it for the log
        await app(scope, receive, send)

    transport = httpx.ASGITransport(app=server_side, client=("10.0.0.5", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/whoami", headers={"x-forwarded-for": "198.51.100.1"})
    assert passed[0]["client"][0] == "198.51.100.1"

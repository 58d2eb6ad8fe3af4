"""Every route, fed what it does not expect: a 4xx with a clear body every time, never a 5xx.

The matrix crosses each operation in the OpenAPI schema with malformed bodies (broken, wrong
types, deeply nested, binary), hostile headers (oversized and malformed cookies, forged
X-Forwarded-For, odd Origin, broken webhook headers) and bad path parameters, anonymous and
logged in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer
from tests.support.webhooks import SECRET
from upak.web.app import create_app

BODIES = [
    b"",
    b"{",
    b"[]",
    b'"just a string"',
    b"null",
    b"1e999999",
    b'{"email": 1, "password": []}',
    b'{"email": "a@b.c", "password": null}',
    b'{"email": "' + b"a" * 70_000 + b'@x.io", "password": "p"}',
    b"[" * 30_000 + b"]" * 30_000,  # within the size limit, past Python's recursion limit
    b'{"email": ' * 6_000 + b'"x"' + b"}" * 6_000,
    b'{"type": "notification", "event": {"nested": true}, "object": []}',
    b"\xff\xfe\x00\x01binary",
    b'{"current_password": 5, "new_password": {"x": 1}}',
]
HEADERS = [
    {},
    {"content-type": "text/plain"},
    {"content-type": "application/json; charset=latin-9"},
    {"cookie": "upak_session=" + "x" * 5000},
    {"cookie": "upak_session=1.%%%%"},
    {"cookie": "upak_session=99999999999999999999999.abc"},
    {"cookie": "upak_session=-1." + "A" * 43},
    {"x-forwarded-for": "not-an-ip, 999.1.1.1, ::ffff:zz"},
    {"origin": "null"},
    {"origin": "http://evil.example"},
    {"webhook-id": "", "webhook-timestamp": "soon", "webhook-signature": "v1,@@@"},
    {"webhook-id": "m" * 10_000, "webhook-timestamp": "9" * 40, "webhook-signature": "v1"},
    {"content-length": "abc"},
]


@pytest.fixture
async def clients(shared_redis: RedisServer, key_prefix: str, tmp_path) -> AsyncIterator[dict]:
    settings = make_settings(
        redis_url=shared_redis.url,
        redis_key_prefix=key_prefix,
        webhook_secret=SECRET,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/upak.db",
        rate_limit_default="1000000/minute:gcra",
        rate_limit_login="1000000/minute:gcra",
        rate_limit_login_ip="1000000/minute:gcra",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        anonymous = httpx.AsyncClient(transport=transport, base_url="http://t")
        user = httpx.AsyncClient(transport=transport, base_url="http://t")
        account = {"email": "fuzz@example.com", "password": "fuzz-password-1"}
        assert (await user.post("/auth/register", json=account)).status_code == 201
        assert (await user.post("/auth/login", json=account)).status_code == 200
        yield {"app": app, "anonymous": anonymous, "user": user, "account": account}
        await anonymous.aclose()
        await user.aclose()


def operations(app) -> list[tuple[str, str]]:
    found = []
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            found.append((method.upper(), path.replace("{handle}", "%00..%2F" + "z" * 300)))
    return found


async def test_no_input_makes_a_5xx(clients: dict) -> None:
    failures = []
    for method, path in operations(clients["app"]):
        for who in ("anonymous", "user"):
            client: httpx.AsyncClient = clients[who]
            for body in BODIES if method in ("POST", "PUT", "PATCH", "DELETE") else [b""]:
                for headers in HEADERS:
                    if who == "user" and "cookie" in headers:
                        continue  # the logged-in client keeps its real cookie
                    try:
                        response = await client.request(method, path, content=body, headers=headers)
                    except Exception as exc:  # an exception escaping the app is a 500 too
                        failures.append((method, path, who, body[:40], headers, repr(exc)[:200]))
                        continue
                    if response.status_code >= 500 and response.status_code != 503:
                        failures.append(
                            (method, path, who, body[:40], headers, response.text[:200])
                        )
                    elif response.status_code >= 400:
                        assert response.headers["content-type"].startswith(
                            "application/problem+json"
                        ), (method, path, response.status_code, response.text[:200])
    assert failures == [], "\n".join(map(str, failures[:20]))


async def test_the_session_still_works_after_the_barrage(clients: dict) -> None:
    await clients["user"].post("/auth/login", content=b"[" * 30_000 + b"]" * 30_000)
    assert (await clients["user"].get("/me")).status_code == 200

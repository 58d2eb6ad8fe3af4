"""Rate limiting over HTTP: the middleware's rules, headers, identity, a route's own policy."""

from __future__ import annotations

import math
import time

import httpx
import pytest
from fastapi import Depends, FastAPI

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer
from upak.domain.passwords import fast_passwords_for_tests
from upak.web.app import create_app
from upak.web.ratelimit_deps import rate_limit

PASSWORD = "correct horse battery"


def add_test_routes(app: FastAPI) -> None:
    @app.get("/items")
    async def items() -> dict[str, str]:
        return {"ok": "items"}

    @app.post("/webhooks/test")
    async def webhook() -> dict[str, str]:
        return {"ok": "hook"}

    @app.post("/exports", dependencies=[Depends(rate_limit("2/minute", name="exports"))])
    async def exports() -> dict[str, str]:
        return {"ok": "export"}


@pytest.fixture
async def client_for(shared_redis: RedisServer, key_prefix: str):
    contexts = []

    async def build(**overrides) -> httpx.AsyncClient:
        settings = make_settings(
            redis_url=shared_redis.url, redis_key_prefix=key_prefix, **overrides
        )
        app = create_app(settings, passwords=fast_passwords_for_tests())
        add_test_routes(app)
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        contexts.append(ctx)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    yield build
    for ctx in contexts:
        await ctx.__aexit__(None, None, None)


async def test_default_limit_headers_and_429(client_for):
    client = await client_for(rate_limit_default="3/minute")
    seen = []
    for _ in range(3):
        response = await client.get("/items")
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == '"default";q=3;w=60'
        seen.append(response.headers["ratelimit"])
    assert [s.split(";")[1] for s in seen] == ["r=2", "r=1", "r=0"]
    assert all(s.startswith('"default";r=') and ";t=" in s for s in seen)
    refused = await client.get("/items")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["status"] == 429 and refused.json()["title"] == "Too many requests"
    assert 59 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-policy"] == '"default";q=3;w=60'
    assert refused.headers["ratelimit"].startswith('"default";r=0;t=')


async def test_health_and_metrics_are_never_limited(client_for):
    client = await client_for(rate_limit_default="1/minute")
    for _ in range(5):
        for path in ("/health", "/metrics"):
            response = await client.get(path)
            assert response.status_code == 200
            assert "ratelimit" not in response.headers


async def test_a_session_keys_the_default_by_user(client_for):
    # The real sessions middleware runs outside the limiter and leaves the user in the scope.
    client = await client_for(rate_limit_default="4/minute", rate_limit_login_ip="100/minute")
    cookies = []
    for user in ("u1@example.com", "u2@example.com"):
        registered = await client.post("/auth/register", json={"email": user, "password": PASSWORD})
        assert registered.status_code == 201
        logged_in = await client.post("/auth/login", json={"email": user, "password": PASSWORD})
        assert logged_in.status_code == 200
        cookies.append(logged_in.cookies["upak_session"])
        client.cookies.clear()
    # Anonymous requests from this address used up its default quota (2 registers, 2 logins
    # count on the IP as anonymous requests too), yet each user has a count of their own.
    assert (await client.get("/items")).status_code == 429
    for cookie in cookies:
        client.cookies.set("upak_session", cookie, domain="t.local")
        statuses = [(await client.get("/items")).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429]


async def test_login_refuses_the_sixth_failure_for_one_email_from_one_network(client_for):
    client = await client_for(rate_limit_login="5/minute")
    started = time.time()
    for n in range(5):
        # Normalisation: the same address however it is cased or padded.
        email = " Alice@Example.COM " if n % 2 else "alice@example.com"
        response = await client.post("/auth/login", json={"email": email, "password": "x"})
        assert response.status_code == 401  # no such account: the failure still counts
    refused = await client.post("/auth/login", json={"email": "alice@EXAMPLE.com", "password": "x"})
    assert refused.status_code == 429
    time_left = 60 - (time.time() - started)
    assert 0 < int(refused.headers["retry-after"]) <= math.ceil(time_left)
    assert '"login";q=5;w=60' in refused.headers["ratelimit-policy"]
    assert '"login";r=0' in refused.headers["ratelimit"]
    # Registrations count on a key of their own; another email is still welcome.
    register = await client.post(
        "/auth/register", json={"email": "alice@example.com", "password": PASSWORD}
    )
    assert register.status_code == 201
    other = await client.post("/auth/login", json={"email": "bob@example.com", "password": "x"})
    assert other.status_code == 401


async def test_login_is_also_limited_by_client_ip(client_for):
    client = await client_for(rate_limit_login="5/minute", rate_limit_login_ip="3/minute")
    statuses = [
        (
            await client.post("/auth/login", json={"email": f"u{n}@example.com", "password": "x"})
        ).status_code
        for n in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    # One decision: the headers name every limit of the request.
    response = await client.post("/auth/login", json={"email": "z@example.com", "password": "x"})
    assert response.headers["ratelimit-policy"].split(", ") == [
        '"default";q=120;w=60',
        '"login-ip";q=3;w=60',
        '"login";q=5;w=60',
    ]


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"email": 5}', b'{"email": "no-at-sign"}', b""]
)
async def test_a_malformed_login_body_is_limited_by_ip_and_never_500(client_for, body):
    client = await client_for(rate_limit_login_ip="2/minute")
    statuses = []
    for _ in range(3):
        response = await client.post(
            "/auth/login", content=body, headers={"content-type": "application/json"}
        )
        statuses.append(response.status_code)
    assert statuses[2] == 429
    assert all(s < 500 for s in statuses)


async def test_x_forwarded_for_from_an_untrusted_client_is_ignored(client_for):
    client = await client_for(rate_limit_default="2/minute")  # TRUSTED_PROXIES empty
    statuses = [
        (await client.get("/items", headers={"x-forwarded-for": f"203.0.113.{n}"})).status_code
        for n in range(3)
    ]
    assert statuses == [200, 200, 429]


async def test_behind_a_trusted_proxy_the_forwarded_client_is_the_key(client_for):
    client = await client_for(rate_limit_default="1/minute", trusted_proxies="127.0.0.0/8")
    ok = await client.get("/items", headers={"x-forwarded-for": "203.0.113.7"})
    assert ok.status_code == 200
    # A client cannot escape by prepending addresses: the right-most untrusted hop counts.
    spoofed = await client.get("/items", headers={"x-forwarded-for": "1.1.1.1, 203.0.113.7"})
    assert spoofed.status_code == 429
    other = await client.get("/items", headers={"x-forwarded-for": "203.0.113.8"})
    assert other.status_code == 200


async def test_webhooks_have_their_own_policy_by_source_ip(client_for):
    client = await client_for(rate_limit_default="1/minute", rate_limit_webhooks="3/minute")
    statuses = [(await client.post("/webhooks/test")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = await client.get("/items")  # the default is a separate count
    assert response.status_code == 200


async def test_a_route_declares_its_own_policy(client_for):
    client = await client_for(rate_limit_default="100/minute")
    first = await client.post("/exports")
    assert first.status_code == 200
    assert '"exports";q=2;w=60' in first.headers["ratelimit-policy"]
    assert '"default";q=100;w=60' in first.headers["ratelimit-policy"]
    assert '"exports";r=1' in first.headers["ratelimit"]
    assert (await client.post("/exports")).status_code == 200
    refused = await client.post("/exports")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 59
    assert '"exports";r=0' in refused.headers["ratelimit"]


def test_a_malformed_route_policy_fails_when_the_route_is_defined():
    with pytest.raises(ValueError, match="not a time unit"):
        rate_limit("2/fortnight", name="bad")


async def test_disabled_means_no_limits_and_no_headers(client_for):
    client = await client_for(rate_limit_default="1/minute", rate_limit_enabled=False)
    for _ in range(3):
        response = await client.get("/items")
        assert response.status_code == 200 and "ratelimit" not in response.headers
    assert (await client.post("/exports")).status_code == 200


async def test_an_oversized_login_body_is_413_not_buffered(client_for):
    client = await client_for()
    response = await client.post("/auth/login", content=b"x" * (64 * 1024 + 1))
    assert response.status_code == 413

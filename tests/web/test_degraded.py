"""The web layer on a sick store: 503 problem+json for store bugs, cookies kept while degraded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from tests.conftest import make_settings
from tests.features.test_sessions import Clock
from tests.store.test_failover import quick_failover_settings
from tests.support.redis_servers import RedisServer
from tests.support.webhooks import SECRET, create_database, notification, read_state, signed_headers
from tests.web.test_auth import (
    PASSWORD,
    client_of,
    client_with,
    login,
    register,
    session_cookie,
)
from upak.domain.passwords import fast_passwords_for_tests
from upak.features.sessions import handle_of
from upak.store import Mode
from upak.web.app import create_app


@pytest.fixture
async def apps(fresh_redis: RedisServer, tmp_path) -> AsyncIterator[list[FastAPI]]:
    """Two apps (two workers) on one Redis and one database."""
    settings = make_settings(
        redis_url=fresh_redis.url,
        redis_socket_timeout=0.2,
        redis_connect_timeout=0.2,
        redis_health_interval=0.1,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
    )
    made, contexts = [], []
    for _ in range(2):
        app = create_app(settings, clock=Clock(), passwords=fast_passwords_for_tests())
        context = app.router.lifespan_context(app)
        await context.__aenter__()
        made.append(app)
        contexts.append(context)
    yield made
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)


async def test_a_store_bug_in_a_middleware_is_503_problem_json(
    apps: list[FastAPI], fresh_redis: RedisServer
) -> None:
    token = "A" * 43
    # Something else wrote a string where the session hash lives: RESOLVE gets WRONGTYPE,
    # inside the (pure ASGI) session middleware, outside every route's exception handler.
    fresh_redis.client().set(f"upak:sessions:{{u1}}:s:{handle_of(token)}", "not a hash")
    async with client_with(apps[0], f"1.{token}") as client:
        response = await client.get("/me")
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert response.json()["title"] == "Service temporarily unavailable"
    assert apps[0].state.services.store.mode is Mode.REDIS  # a bug is no outage


async def test_a_session_unknown_here_while_degraded_keeps_its_cookie(
    apps: list[FastAPI], fresh_redis: RedisServer
) -> None:
    one, other = apps
    async with client_of(one) as client:
        await register(client, "kept@example.com")
        await login(client, "kept@example.com")
        cookie = session_cookie(client)
    fresh_redis.pause()
    try:
        async with client_with(other, cookie) as client:  # a worker that never served it
            response = await client.get("/me")
            health = (await client.get("/health")).json()
    finally:
        fresh_redis.resume()
    assert other.state.services.store.mode is Mode.MEMORY or health["store"] == "memory"
    assert response.status_code == 401
    assert "set-cookie" not in response.headers  # it may be live in Redis: not deleted
    assert response.headers["retry-after"] == "1"
    assert health["status"] == "degraded" and health["condition"] == "timeout"
    for _ in range(100):
        if other.state.services.store.mode is Mode.REDIS:
            break
        await asyncio.sleep(0.05)
    async with client_with(other, cookie) as client:
        assert (await client.get("/me")).status_code == 200  # back: the cookie still works


async def test_redis_full_serves_every_route_and_comes_back(
    fresh_redis: RedisServer, tmp_path
) -> None:
    """Redis over maxmemory under noeviction (what `upak redis config` recommends)."""
    db_path = str(tmp_path / "full.db")
    settings = quick_failover_settings(
        fresh_redis.url,
        redis_socket_timeout=0.3,
        redis_connect_timeout=0.3,
        database_url=create_database(db_path, users=1),
        webhook_secret=SECRET,
    )
    app = create_app(settings, passwords=fast_passwords_for_tests())
    context = app.router.lifespan_context(app)
    await context.__aenter__()
    admin = fresh_redis.client()
    try:
        async with client_of(app) as client:
            await register(client, "full@example.com")
            await login(client, "full@example.com")
            before = session_cookie(client)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        try:
            async with client_of(app) as client:
                during_login = await client.post(
                    "/auth/login", json={"email": "full@example.com", "password": PASSWORD}
                )
                assert during_login.status_code == 200, during_login.text
                during = session_cookie(client)
                assert (await client.get("/me")).status_code == 200
                assert (await client.get("/plans")).status_code == 200
                body = notification(user_id=1)
                headers = signed_headers(body, at=time.time())
                paid = await client.post("/webhooks/upak", content=body, headers=headers)
                assert paid.status_code == 200, paid.text
                health = (await client.get("/health")).json()
                assert health["status"] != "ok" and health["condition"] == "oom"
            async with client_with(app, before) as client:
                assert (await client.get("/me")).status_code == 200
        finally:
            admin.config_set("maxmemory", "0")
        for _ in range(100):  # back within seconds
            if app.state.services.store.mode is Mode.REDIS:
                break
            await asyncio.sleep(0.05)
        assert app.state.services.store.mode is Mode.REDIS
        async with client_of(app) as client:
            replay = await client.post("/webhooks/upak", content=body, headers=headers)
            assert (replay.status_code, replay.json()) == (200, {"status": "duplicate"})
        assert read_state(db_path)[0] == 1  # applied once
        async with client_with(app, during) as client:
            assert (await client.get("/me")).status_code == 200  # made while full, still works
    finally:
        await context.__aexit__(None, None, None)

"""The service skeleton: /health and /metrics, from a real app on a real Redis."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer, free_port
from upak.web.app import create_app


@pytest.fixture
async def client_for():
    apps = []

    async def build(**overrides):
        app = create_app(make_settings(**overrides))
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        apps.append(ctx)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    yield build
    for ctx in apps:
        await ctx.__aexit__(None, None, None)


async def test_health_reports_redis_when_reachable(client_for, shared_redis: RedisServer):
    client = await client_for(redis_url=shared_redis.url)
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["store"] == "redis"


async def test_health_reports_memory_without_redis(client_for):
    client = await client_for(redis_url=f"redis://:hunter2secret@127.0.0.1:{free_port()}/0")
    body = (await client.get("/health")).json()
    assert body["status"] == "degraded" and body["store"] == "memory"
    assert "hunter2secret" not in str(body)
    assert body["redis"].startswith("redis://:***@127.0.0.1:")


async def test_metrics_expose_store_mode(client_for, shared_redis: RedisServer):
    client = await client_for(redis_url=shared_redis.url)
    text = (await client.get("/metrics")).text
    assert 'upak_store_mode{mode="redis"} 1.0' in text
    assert "upak_store_fallback_calls_total 0.0" in text


async def test_oversized_body_is_413(client_for):
    client = await client_for(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    response = await client.post("/health", content=b"x" * (64 * 1024 + 1))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_health_follows_redis_without_other_traffic(client_for, fresh_redis: RedisServer):
    import asyncio
    import time

    client = await client_for(redis_url=fresh_redis.url, redis_health_interval=0.25)

    async def store_mode_within(mode: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            # Answered from memory even while Redis hangs: a hung /health fails the test here.
            response = await asyncio.wait_for(client.get("/health"), timeout=seconds)
            if response.json()["store"] == mode:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"/health did not report {mode} within {seconds}s")

    await store_mode_within("redis", 1.0)
    fresh_redis.pause()
    try:
        await store_mode_within("memory", 1.0)
    finally:
        fresh_redis.resume()
    await store_mode_within("redis", 2.0)


def test_cli_reports_a_bad_setting_in_one_line(monkeypatch) -> None:
    from typer.testing import CliRunner

    from upak.cli import app

    monkeypatch.setenv("REDIS_TTL", "-1")
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "REDIS_TTL" in result.output and "Traceback" not in result.output


async def test_serving_freezes_the_start_up_heap_and_tests_do_not(shared_redis: RedisServer):
    import gc

    assert gc.get_freeze_count() == 0
    plain = create_app(make_settings(redis_url=shared_redis.url))
    async with plain.router.lifespan_context(plain):
        assert gc.get_freeze_count() == 0  # a test process builds hundreds of apps
    served = create_app(make_settings(redis_url=shared_redis.url), freeze_startup_heap=True)
    try:
        async with served.router.lifespan_context(served):
            # Start-up's objects are out of the collector's way while the app serves.
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


async def test_strangers_get_the_status_and_the_store_only(shared_redis: RedisServer):
    app = create_app(make_settings(redis_url=shared_redis.url))
    async with app.router.lifespan_context(app):
        outside = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=outside, base_url="http://t") as client:
            anonymous = (await client.get("/health")).json()
        assert anonymous == {"status": "ok", "store": "redis"}
        local = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=local, base_url="http://t") as client:
            details = (await client.get("/health")).json()
            # Relayed by a proxy on this host: loopback, but not the host asking.
            relayed = (
                await client.get("/health", headers={"X-Forwarded-For": "203.0.113.9"})
            ).json()
        assert details["worker"] > 0 and details["redis"].startswith("redis://")
        assert "last_error" in details
        assert relayed == anonymous


async def test_detail_networks_are_a_setting(shared_redis: RedisServer):
    app = create_app(
        make_settings(redis_url=shared_redis.url, health_detail_networks="10.1.0.0/16")
    )
    async with app.router.lifespan_context(app):
        for peer, detailed in ((("10.1.2.3", 1), True), (("127.0.0.1", 1), False)):
            transport = httpx.ASGITransport(app=app, client=peer)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                body = (await client.get("/health")).json()
            assert ("worker" in body) is detailed, peer


def test_production_with_refused_redis_credentials_exits_in_one_line(monkeypatch) -> None:
    from typer.testing import CliRunner

    from tests.support.redis_servers import redis_server
    from upak.cli import app

    with redis_server(password="the-right-one-5e1f") as server:
        monkeypatch.setenv("UPAK_ENV", "production")
        monkeypatch.setenv("REDIS_URL", f"redis://:wrong-guess-77@127.0.0.1:{server.port}/0")
        result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "refused the credentials" in result.stderr
    assert "REDIS_PASSWORD" in result.stderr
    assert "wrong-guess-77" not in result.output and "Traceback" not in result.output

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

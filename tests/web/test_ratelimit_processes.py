"""Rate limiting across processes and across a Redis outage, on real servers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer
from tests.support.service import running_service
from upak.store import Mode
from upak.web.app import create_app

pytestmark = pytest.mark.slow


async def test_two_workers_admit_exactly_the_limit(shared_redis: RedisServer, key_prefix):
    env = {
        "REDIS_URL": shared_redis.url,
        "REDIS_KEY_PREFIX": key_prefix,
        "RATE_LIMIT_DEFAULT": "20/10s",
    }
    # `upak serve --workers 2`; it returns once both workers have answered /health.
    with running_service(env, workers=2) as service:
        port = service.port
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
        ) as client:
            start = asyncio.Event()

            async def one_client() -> int:
                await start.wait()
                return (await client.get("/openapi.json")).status_code

            tasks = [asyncio.create_task(one_client()) for _ in range(100)]
            started = time.monotonic()
            start.set()
            statuses = Counter(await asyncio.gather(*tasks))
            elapsed = time.monotonic() - started
    assert elapsed < 10, "the burst must fit in the window for the count to mean anything"
    assert statuses == {200: 20, 429: 80}


async def test_redis_killed_mid_test_limits_per_process_then_shared_again(
    fresh_redis: RedisServer,
):
    settings = make_settings(
        redis_url=fresh_redis.url,
        redis_socket_timeout=0.2,
        redis_connect_timeout=0.2,
        redis_health_interval=0.1,
        redis_probe_backoff_max=0.2,
        rate_limit_default="10/minute",
        rate_limit_fallback_divisor=2,
        trusted_proxies="127.0.0.0/8",
    )
    apps = [create_app(settings), create_app(settings)]  # two workers' worth of state
    contexts = [app.router.lifespan_context(app) for app in apps]
    for ctx in contexts:
        await ctx.__aenter__()
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        for app in apps
    ]

    async def hit(client: httpx.AsyncClient, ip: str, times: int) -> list[int]:
        headers = {"x-forwarded-for": ip}
        return [
            (await client.get("/openapi.json", headers=headers)).status_code for _ in range(times)
        ]

    try:
        # Shared: six requests through either worker leave four for everyone.
        assert await hit(clients[0], "203.0.113.1", 3) == [200] * 3
        assert await hit(clients[1], "203.0.113.1", 3) == [200] * 3
        response = await clients[1].get("/openapi.json", headers={"x-forwarded-for": "203.0.113.1"})
        assert '"default";r=3' in response.headers["ratelimit"]

        # Traffic keeps flowing while Redis dies under it: never a 5xx.
        stop = asyncio.Event()
        seen: Counter[int] = Counter()

        async def background(client: httpx.AsyncClient, n: int) -> None:
            while not stop.is_set():
                await asyncio.sleep(0)  # served from memory, a request may never yield
                ip = f"198.51.100.{n}"
                seen[
                    (await client.get("/openapi.json", headers={"x-forwarded-for": ip})).status_code
                ] += 1

        noise = [asyncio.create_task(background(c, n)) for n, c in enumerate(clients * 4)]
        await asyncio.sleep(0.2)
        fresh_redis.kill()
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*noise)
        assert set(seen) <= {200, 429} and seen[200] > 0

        # Per process, each with 10 / 2: no 5xx, no waiting on the dead server.
        started = time.monotonic()
        during = [await hit(client, "203.0.113.2", 7) for client in clients]
        assert during == [[200] * 5 + [429] * 2] * 2
        assert time.monotonic() - started < 5
        assert all(app.state.services.store.mode is Mode.MEMORY for app in apps)

        fresh_redis.start()
        deadline = time.monotonic() + 15
        while any(app.state.services.store.mode is not Mode.REDIS for app in apps):
            assert time.monotonic() < deadline, "the store did not return to Redis"
            await asyncio.sleep(0.05)
        # Shared again: ten in all, whichever worker counts them.
        after = await hit(clients[0], "203.0.113.3", 6) + await hit(clients[1], "203.0.113.3", 6)
        assert Counter(after) == {200: 10, 429: 2}
        assert after[6:] == [200] * 4 + [429] * 2
    finally:
        for client in clients:
            await client.aclose()
        for ctx in contexts:
            await ctx.__aexit__(None, None, None)

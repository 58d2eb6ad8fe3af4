"""A Redis that is there but sick, met as an operator meets it: `upak serve --workers 2` under load.

BUSY replies for 3 s, then connections killed every 0.2 s for 10 s, then two outages in a row.
Through all of it, logged-in reads by sessions made before the faults must never get a 5xx
or a 401: a BUSY Redis is an outage (not a 500), hysteresis keeps a flapping Redis from
switching the service dozens of times, and the session mirror survives each recovery, so the
second of two outages logs nobody out. bench/chaos.py reports the same faults as figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.support.redis_servers import RedisServer, redis_server
from tests.support.scripts import BUSY_LUA
from tests.support.service import QUICK_FAILOVER_ENV, Service, running_service

pytestmark = pytest.mark.slow

USERS = 4
PASSWORD = "sick-redis-password-1"
QUICK = {
    **QUICK_FAILOVER_ENV,
    "RATE_LIMIT_DEFAULT": "1000000/minute",
    "RATE_LIMIT_LOGIN": "1000000/minute",
    "RATE_LIMIT_REGISTER": "1000000/minute",
}


@pytest.fixture
def sick() -> Iterator[tuple[RedisServer, Service]]:
    # Persistent, as production's Redis: an outage by kill -9 must not erase the sessions.
    durable = {"appendonly": "yes", "appendfsync": "always"}
    with (
        redis_server(config=durable) as redis,
        running_service({"REDIS_URL": redis.url, **QUICK}, workers=2) as service,
    ):
        yield redis, service


async def _sessions(url: str) -> list[str]:
    """Cookies of users who logged in and used their session on both workers."""
    cookies = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for n in range(USERS):
            account = {"email": f"sick{n}@example.com", "password": PASSWORD}
            assert (await client.post("/auth/register", json=account)).status_code == 201
            login = await client.post("/auth/login", json=account)
            assert login.status_code == 200, login.text
            cookies.append("; ".join(f"{k}={v}" for k, v in login.cookies.items()))
            client.cookies.clear()
    # A fresh connection per request lets the kernel spread them over both workers, so each
    # worker has served (and mirrored) every session before the faults begin.
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for cookie in cookies:
            for _ in range(16):
                me = await client.get("/me", headers={"Cookie": cookie, "Connection": "close"})
                assert me.status_code == 200, me.text
    return cookies


async def _load(url: str, cookies: list[str], stop: asyncio.Event, statuses: Counter) -> None:
    """Logged-in /me and anonymous /plans reads from 6 clients until `stop`."""

    async def client_loop(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            i = index
            while not stop.is_set():
                cookie = cookies[i % len(cookies)]
                i += 1
                me = await client.get("/me", headers={"Cookie": cookie})
                statuses[("/me", me.status_code)] += 1
                plans = await client.get("/plans")
                statuses[("/plans", plans.status_code)] += 1

    await asyncio.gather(*(client_loop(i) for i in range(6)))


async def _health(url: str) -> list[dict]:
    """/health of both workers (a fresh connection each, until both answered)."""
    seen: dict[int, dict] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for _ in range(50):
            body = (await client.get("/health", headers={"Connection": "close"})).json()
            seen[int(body["worker"])] = body
            if len(seen) == 2:
                break
    return list(seen.values())


async def _under_load(url: str, cookies: list[str], fault) -> Counter:
    statuses: Counter = Counter()
    stop = asyncio.Event()
    load = asyncio.create_task(_load(url, cookies, stop, statuses))
    try:
        await asyncio.sleep(0.3)
        await fault()
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await load
    return statuses


def _bad(statuses: Counter) -> dict:
    """5xx on any route, and 401 for sessions that are valid."""
    return {key: n for key, n in statuses.items() if key[1] >= 500 or key[1] == 401}


async def test_busy_redis_costs_no_5xx_and_no_logout(sick) -> None:
    redis, service = sick
    cookies = await _sessions(service.url)

    async def busy_for_3s() -> None:
        admin = redis.client()
        admin.config_set("busy-reply-threshold", "100")
        # The script holds Redis for 3 s; every other call meanwhile is answered BUSY.
        with contextlib.suppress(Exception):
            await asyncio.to_thread(redis.client().eval, BUSY_LUA, 0, 3000)

    statuses = await _under_load(service.url, cookies, busy_for_3s)
    assert _bad(statuses) == {}, f"{statuses}\n{service.log()[-3000:]}"
    assert statuses[("/me", 200)] > 50
    health = await _health(service.url)
    assert max(h["switches_to_memory"] for h in health) >= 1, "BUSY was never seen"
    deadline = time.monotonic() + 10
    while any(h["store"] != "redis" for h in health) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        health = await _health(service.url)
    assert all(h["store"] == "redis" for h in health), health  # back by itself


async def test_flapping_then_two_outages_cost_no_5xx_and_no_logout(sick) -> None:
    redis, service = sick
    cookies = await _sessions(service.url)
    admin = redis.client()

    async def flap_for_10s() -> None:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(admin.client_kill_filter, _type="normal")
            await asyncio.sleep(0.2)

    statuses = await _under_load(service.url, cookies, flap_for_10s)
    assert _bad(statuses) == {}, f"{statuses}\n{service.log()[-3000:]}"
    assert statuses[("/me", 200)] > 100
    health = await _health(service.url)
    # Without hysteresis a worker switches at nearly every kill (about 50 in 10 s).
    assert all(h["switches_to_memory"] <= 10 for h in health), health

    async def two_outages() -> None:
        for _ in range(2):
            redis.kill()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(redis.start)
            await asyncio.sleep(1.5)  # both workers back on Redis between the two

    statuses = await _under_load(service.url, cookies, two_outages)
    assert _bad(statuses) == {}, f"{statuses}\n{service.log()[-3000:]}"
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        after = [(await client.get("/me", headers={"Cookie": c})).status_code for c in cookies]
    assert after == [200] * USERS

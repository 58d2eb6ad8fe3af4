"""Write-back never resurrects: a logout during an outage wins over any copy, in any order.

Stores on one real Redis stand for workers (and, with clocks apart, for two services on two
hosts sharing the Redis). Each is told when to come back by its probe's first backoff, so the
order of write-back is the test's choice: the worker that saw the logout first, the one that
made the session last, which is the order that brought sessions back before tombstones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from tests.features.test_sessions import Clock, cookie
from tests.store.test_failover import quick_failover_settings, wait_for_mode
from tests.support.redis_servers import RedisServer
from upak.features.sessions import SessionManager
from upak.store import FailoverStore, KeySpace, Mode, build_store

Worker = tuple[FailoverStore, SessionManager]


@pytest.fixture
async def start_worker(fresh_redis: RedisServer) -> AsyncIterator[Callable[..., Worker]]:
    stores: list[FailoverStore] = []
    settings = quick_failover_settings(fresh_redis.url)

    def start(clock: Clock, comes_back_after: float) -> Worker:
        store = build_store(settings, clock=clock)
        store.backoff_min = comes_back_after  # the first probe after the outage waits this
        stores.append(store)
        return store, SessionManager(
            store, KeySpace("upak:"), idle_timeout=3600, max_age=86_400, clock=clock
        )

    yield start
    for store in stores:
        await store.close()


async def _all_degraded(pool: list[Worker]) -> None:
    for store, _ in pool:
        await store.ping()
        assert store.mode is Mode.MEMORY


def _sessions_in(server: RedisServer) -> list[bytes]:
    return server.client().keys("upak:sessions:*:s:*")


async def test_a_logout_during_an_outage_stays_over_four_workers(
    start_worker, fresh_redis: RedisServer
) -> None:
    clock = Clock()
    # Worker 1 (the login) comes back last, worker 2 (the logout) first.
    pool = [start_worker(clock, after) for after in (1.0, 0.05, 0.3, 0.5)]
    for store, _ in pool:
        await store.start()
    used_before = await pool[2][1].create(8)
    for _, manager in pool:
        assert await manager.resolve(cookie(used_before)) is not None  # mirrored everywhere
    fresh_redis.pause()
    try:
        await _all_degraded(pool)
        made_during = await pool[0][1].create(9)  # only worker 1 knows it
        assert await pool[1][1].revoke(9, made_during.session.handle) is False  # unknown there
        assert await pool[1][1].revoke(8, used_before.session.handle)  # mirrored there
        clock.advance(5)
        for _, manager in (pool[2], pool[3]):
            assert await manager.resolve(cookie(used_before)) is not None  # they cannot know
    finally:
        fresh_redis.resume()
    for store, _ in pool:
        await wait_for_mode(store, Mode.REDIS, within=5.0)
    assert _sessions_in(fresh_redis) == []
    for _, manager in pool:
        assert await manager.resolve(cookie(made_during)) is None
        assert await manager.resolve(cookie(used_before)) is None
    # The recovery's check emptied every mirror of them: the next outage cannot serve them.
    await asyncio.sleep(0.2)
    fresh_redis.pause()
    try:
        await _all_degraded(pool)
        for _, manager in pool:
            assert await manager.resolve(cookie(made_during)) is None
            assert await manager.resolve(cookie(used_before)) is None
    finally:
        fresh_redis.resume()


async def test_a_logout_during_an_outage_stays_over_two_services(
    start_worker, fresh_redis: RedisServer
) -> None:
    """Two hosts, their clocks 1.5 s apart, each with its own worker, one Redis."""
    here, there = Clock(), Clock()
    there.advance(-1.5)
    login_host = start_worker(here, 0.8)
    logout_host = start_worker(there, 0.05)
    for store, _ in (login_host, logout_host):
        await store.start()
    fresh_redis.pause()
    try:
        await _all_degraded([login_host, logout_host])
        issued = await login_host[1].create(11)
        here.advance(1)
        there.advance(1)
        await logout_host[1].revoke(11, issued.session.handle)
        here.advance(1)
        assert await login_host[1].resolve(cookie(issued)) is not None  # touched, journaled
    finally:
        fresh_redis.resume()
    for store, _ in (login_host, logout_host):
        await wait_for_mode(store, Mode.REDIS, within=5.0)
    assert _sessions_in(fresh_redis) == []
    assert await login_host[1].resolve(cookie(issued)) is None
    assert fresh_redis.client().exists(f"upak:sessions:{{u11}}:t:{issued.session.handle}")

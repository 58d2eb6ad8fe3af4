"""Flapping and repeated outages cost users nothing (two stores on one real Redis = two workers).

A Redis whose connections are killed every 0.2 s answers, fails and answers again: the
hysteresis must keep each store from switching dozens of times, no call may fail, and no
session its users were using may be lost. Two outages in a row must not log anybody out:
the mirror survives the recovery between them.
"""

from __future__ import annotations

import asyncio
import time

from tests.features.test_sessions import Clock, cookie
from tests.features.test_sessions_failover import clock, workers  # noqa: F401 (fixtures)
from tests.store.test_failover import wait_for_mode
from tests.support.redis_servers import RedisServer
from upak.store import Mode


async def test_connections_killed_every_200ms(workers, fresh_redis: RedisServer) -> None:  # noqa: F811
    pool = [workers(), workers()]
    for store, _ in pool:
        await store.start()
    users = {}
    for user_id in range(1, 11):
        issued = await pool[user_id % 2][1].create(user_id)
        users[user_id] = issued
        for _, manager in pool:  # both workers served every user before the flapping
            assert await manager.resolve(cookie(issued)) is not None
    admin = fresh_redis.client()
    failures: list[str] = []
    stop = asyncio.Event()

    async def load(index: int) -> int:
        _, manager = pool[index]
        served = 0
        while not stop.is_set():
            for user_id, issued in users.items():
                try:
                    if await manager.resolve(cookie(issued)) is None:
                        failures.append(f"worker {index}: user {user_id} logged out")
                except Exception as exc:  # exactly what must never happen
                    failures.append(f"worker {index}: {exc!r}")
                served += 1
            await asyncio.sleep(0.005)
        return served

    tasks = [asyncio.create_task(load(i)) for i in range(2)]
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        await asyncio.to_thread(admin.client_kill_filter, _type="normal")
        await asyncio.sleep(0.2)
    stop.set()
    served = await asyncio.gather(*tasks)
    assert failures == []
    assert min(served) > 100
    for store, _ in pool:
        # Without hysteresis each store switches at nearly every kill (15 in 3 s).
        assert store.stats.switches_to_memory <= 6, store.stats.as_dict()


async def test_two_outages_in_a_row(workers, fresh_redis: RedisServer, clock: Clock) -> None:  # noqa: F811
    (store, manager), _ = workers(), workers()
    store.hold_min = 0.0  # this test is about the mirror, not the hold
    await store.start()
    issued = await manager.create(3)
    assert await manager.resolve(cookie(issued)) is not None  # used before the outages
    for _ in range(2):
        fresh_redis.pause()
        try:
            await store.ping()
            assert store.mode is Mode.MEMORY
            clock.advance(30)
            assert await manager.resolve(cookie(issued)) is not None
        finally:
            fresh_redis.resume()
        await wait_for_mode(store, Mode.REDIS, within=3.0)
    assert await manager.resolve(cookie(issued)) is not None

"""Failover against a real redis-server: kill -9, SIGSTOP/SIGCONT, restarts with and without data.

Every scenario drives a steady stream of calls through the FailoverStore and checks that none
failed, that the mode flips at the first failing call and back within 2 s of Redis returning,
and that what memory accepted during the outage is in Redis afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer
from upak.config import Settings
from upak.store import FailoverStore, Mode, build_store


@dataclass
class CallStream:
    """Claims unique keys back to back; records every error a caller would have seen."""

    store: FailoverStore
    errors: list[BaseException] = field(default_factory=list)
    calls: int = 0
    claimed_during_outage: list[str] = field(default_factory=list)
    _counter: itertools.count = field(default_factory=itertools.count)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            key = f"replay:stream:{next(self._counter)}"
            try:
                won = await self.store.claim_once(key, 60_000)
            except Exception as exc:  # a failed call is exactly what must not happen
                self.errors.append(exc)
            else:
                self.calls += 1
                assert won
                if self.store.mode is Mode.MEMORY:
                    self.claimed_during_outage.append(key)
            await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def streaming(store: FailoverStore) -> AsyncIterator[CallStream]:
    stream = CallStream(store)
    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    try:
        yield stream
    finally:
        stop.set()
        await task


def quick_failover_settings(redis_url: str, **overrides: Any) -> Settings:
    """Settings that notice an outage and a recovery within a fraction of a second."""
    fast = {
        "redis_socket_timeout": 0.2,
        "redis_connect_timeout": 0.2,
        "redis_health_interval": 0.1,
        "redis_probe_backoff_max": 0.2,
    }
    return make_settings(redis_url=redis_url, **{**fast, **overrides})


async def wait_for_mode(store: FailoverStore, mode: Mode, within: float) -> float:
    """Seconds until the store reports `mode`; fails the test past `within`."""
    started = time.monotonic()
    while store.mode is not mode:
        if time.monotonic() - started > within:
            pytest.fail(f"store did not switch to {mode} within {within}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def assert_outage_claims_survive(store: FailoverStore, stream: CallStream) -> None:
    assert stream.claimed_during_outage, "no call was served from memory during the outage"
    for key in stream.claimed_during_outage[:50]:
        assert await store.claim_once(key, 60_000) is False, f"{key} was lost by the recovery"
    assert store.stats.pending_writeback == 0


@pytest.fixture
async def store(fresh_redis: RedisServer) -> AsyncIterator[FailoverStore]:
    store = build_store(
        make_settings(
            redis_url=fresh_redis.url,
            redis_socket_timeout=0.2,
            redis_connect_timeout=0.2,
            redis_health_interval=0.1,
        )
    )
    await store.start()
    assert store.mode is Mode.REDIS
    yield store
    await store.close()


async def test_kill_9_then_restart_empty(store: FailoverStore, fresh_redis: RedisServer) -> None:
    async with streaming(store) as stream:
        await asyncio.sleep(0.1)
        fresh_redis.kill()
        await wait_for_mode(store, Mode.MEMORY, within=1.0)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(fresh_redis.start)  # same port, empty dataset
        await wait_for_mode(store, Mode.REDIS, within=2.0)
        await asyncio.sleep(0.1)
    assert stream.errors == []
    assert store.stats.switches_to_memory == 1 and store.stats.switches_to_redis == 1
    await assert_outage_claims_survive(store, stream)


async def test_sigstop_then_sigcont(store: FailoverStore, fresh_redis: RedisServer) -> None:
    async with streaming(store) as stream:
        await asyncio.sleep(0.1)
        fresh_redis.pause()
        try:
            await wait_for_mode(store, Mode.MEMORY, within=1.0)
            # Breaker open: calls are served without a single round trip to the hung server.
            assert store.redis is not None
            sent = store.redis.calls_sent
            results = await asyncio.gather(
                *(store.claim_once(f"replay:hung:{i}", 60_000) for i in range(100))
            )
            assert all(results) and store.redis.calls_sent == sent
            await asyncio.sleep(0.2)
        finally:
            fresh_redis.resume()
        await wait_for_mode(store, Mode.REDIS, within=2.0)
    assert stream.errors == []
    await assert_outage_claims_survive(store, stream)
    assert await store.claim_once("replay:hung:7", 60_000) is False


async def test_restart_keeping_data(store: FailoverStore, fresh_redis: RedisServer) -> None:
    assert await store.claim_once("replay:before", 60_000)
    async with streaming(store) as stream:
        await asyncio.sleep(0.1)
        # In a thread, so the stream keeps calling while the server goes down and comes back.
        await asyncio.to_thread(fresh_redis.restart, keep_data=True)
        await wait_for_mode(store, Mode.MEMORY, within=1.0)
        await wait_for_mode(store, Mode.REDIS, within=2.0)
        await asyncio.sleep(0.1)
    assert stream.errors == []
    assert await store.claim_once("replay:before", 60_000) is False
    await assert_outage_claims_survive(store, stream)


async def test_outage_detected_without_traffic(store: FailoverStore, fresh_redis: RedisServer):
    fresh_redis.kill()
    await wait_for_mode(store, Mode.MEMORY, within=1.0)
    assert "Connection" in (store.stats.last_error or "")
    fresh_redis.start()
    await wait_for_mode(store, Mode.REDIS, within=2.0)


async def test_script_cache_flush_is_transparent(store: FailoverStore, fresh_redis: RedisServer):
    assert await store.claim_once("replay:a", 60_000)
    fresh_redis.client().script_flush()
    assert await store.claim_once("replay:b", 60_000)
    assert store.stats.fallback_calls == 0


async def test_writeback_keeps_the_remaining_ttl(fresh_redis: RedisServer) -> None:
    now = [1_000_000.0]
    store = build_store(
        make_settings(
            redis_url=fresh_redis.url, redis_socket_timeout=0.2, redis_connect_timeout=0.2
        ),
        clock=lambda: now[0],
    )
    await store.start()
    try:
        fresh_redis.kill()
        assert await store.claim_once("replay:ttl", 60_000)  # first failing call: to memory
        assert store.mode is Mode.MEMORY
        now[0] += 20  # 20 s of outage pass on the injected clock
        fresh_redis.start()
        await wait_for_mode(store, Mode.REDIS, within=2.0)
        ttl = fresh_redis.client().pttl("replay:ttl")
        assert 39_000 <= ttl <= 40_000
    finally:
        await store.close()

"""The failure model on a real redis-server: server conditions degrade, programming errors stay.

A full Redis (maxmemory under noeviction) and a busy one (a script past busy-reply-threshold)
answer every call, but refuse to serve it: the store must take them as it takes an outage,
with `/health`'s condition saying which, and come back once they pass. A WRONGTYPE is a bug in
one operation, not an outage: it stays a StoreError and the store stays on Redis.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
import redis.exceptions as rex

from tests.conftest import make_settings
from tests.features.test_sessions import cookie
from tests.store.test_failover import wait_for_mode
from tests.support.redis_servers import RedisServer
from tests.support.scripts import BUSY_LUA
from upak.features.sessions import SessionManager
from upak.store import FailoverStore, KeySpace, Mode, StoreError, build_store
from upak.store.conditions import Condition, condition_of


def _settings(server: RedisServer):
    return make_settings(
        redis_url=server.url,
        redis_socket_timeout=0.3,
        redis_connect_timeout=0.3,
        redis_health_interval=0.1,
        redis_probe_backoff_max=0.2,
    )


@pytest.fixture
async def store(fresh_redis: RedisServer) -> AsyncIterator[FailoverStore]:
    store = build_store(_settings(fresh_redis))
    await store.start()
    assert store.mode is Mode.REDIS
    yield store
    await store.close()


def sessions_on(store: FailoverStore) -> SessionManager:
    return SessionManager(store, KeySpace("upak:"), idle_timeout=3600, max_age=86_400)


def test_every_condition_code_is_classified() -> None:
    replies = {
        "OOM command not allowed when used memory > 'maxmemory'.": Condition.OOM,
        "BUSY Redis is busy running a script.": Condition.BUSY,
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable": (
            Condition.MISCONF
        ),
        "NOREPLICAS Not enough good replicas to write.": Condition.NOREPLICAS,
        "CLUSTERDOWN The cluster is down": Condition.CLUSTERDOWN,
        "TRYAGAIN Multiple keys request during rehashing of slot": Condition.TRYAGAIN,
        "MASTERDOWN Link with MASTER is down": Condition.MASTERDOWN,
        "LOADING Redis is loading the dataset in memory": Condition.LOADING,
        "READONLY You can't write against a read only replica.": Condition.READONLY,
    }
    for message, condition in replies.items():
        assert condition_of(rex.ResponseError(message)) is condition, message
    # redis-py strips the code from the classes it maps: the class says it then.
    assert condition_of(rex.OutOfMemoryError("command not allowed")) is Condition.OOM
    assert condition_of(rex.BusyLoadingError("loading")) is Condition.LOADING
    assert condition_of(rex.ReadOnlyError("read only")) is Condition.READONLY
    assert condition_of(rex.TimeoutError("slow")) is Condition.TIMEOUT
    assert condition_of(rex.ConnectionError("gone")) is Condition.UNREACHABLE
    for bug in (
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "CROSSSLOT Keys in request don't hash to the same slot",
        "NOSCRIPT No matching script.",
        "ERR Error running script",
    ):
        assert condition_of(rex.ResponseError(bug)) is None, bug
    assert condition_of(rex.RedisClusterException("keys span slots")) is None


async def test_redis_full_degrades_and_recovers(
    store: FailoverStore, fresh_redis: RedisServer
) -> None:
    manager = sessions_on(store)
    before = await manager.create(7)  # on Redis, before it fills up
    admin = fresh_redis.client()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")  # far below what it uses: every write is refused
    try:
        assert await store.claim_once("replay:full", 60_000)  # served, not a 500
        assert store.mode is Mode.MEMORY
        assert store.stats.as_dict()["condition"] == "oom"
        during = await manager.create(7)  # a login while Redis is full
        assert await manager.resolve(cookie(during)) is not None
        # Reads are still served: a worker that never saw this session finds it in Redis.
        other = build_store(_settings(fresh_redis))
        await other.start()
        try:
            await other.claim_once("replay:trip-other", 60_000)
            assert other.mode is Mode.MEMORY
            assert await sessions_on(other).resolve(cookie(before)) is not None
            assert other.stats.read_through_calls == 1
        finally:
            await other.close()
        await asyncio.sleep(0.5)
        assert store.mode is Mode.MEMORY  # PING answers, but the write probe is refused
    finally:
        admin.config_set("maxmemory", "0")
    await wait_for_mode(store, Mode.REDIS, within=3.0)
    assert store.stats.condition is None
    assert await store.claim_once("replay:full", 60_000) is False  # written back
    assert admin.exists(f"upak:sessions:{{u7}}:s:{during.session.handle}")
    assert await manager.resolve(cookie(during)) is not None


async def test_redis_busy_degrades_without_an_error(
    store: FailoverStore, fresh_redis: RedisServer
) -> None:
    admin = fresh_redis.client()
    admin.config_set("busy-reply-threshold", "100")
    busy = threading.Thread(target=lambda: fresh_redis.client().eval(BUSY_LUA, 0, 1500))
    busy.start()
    try:
        await asyncio.sleep(0.2)  # past the threshold: BUSY replies
        results = [await store.claim_once(f"replay:busy:{i}", 60_000) for i in range(20)]
        assert all(results)
        assert store.mode is Mode.MEMORY
        assert store.stats.condition in ("busy", "timeout")
    finally:
        await asyncio.to_thread(busy.join)
    await wait_for_mode(store, Mode.REDIS, within=3.0)
    assert await store.claim_once("replay:busy:3", 60_000) is False


async def test_a_programming_error_is_no_outage(
    store: FailoverStore, fresh_redis: RedisServer
) -> None:
    fresh_redis.client().hset("upak:wrong", "a", "1")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await store.get("upak:wrong")
    assert store.mode is Mode.REDIS and store.stats.fallback_calls == 0

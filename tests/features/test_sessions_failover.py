"""Sessions across a Redis outage, with two stores on one real Redis standing for two workers.

Outages are a SIGSTOPped server (hung: data kept) or kill -9 (data gone); a store notices
at its first failing call or heartbeat, serves sessions from its memory, and writes back
what it accepted when Redis returns.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.features.test_sessions import Clock, cookie
from tests.store.test_failover import quick_failover_settings, wait_for_mode
from tests.support.redis_servers import RedisServer
from upak.features import sessions as feature
from upak.features.sessions import SessionManager
from upak.store import FailoverStore, KeySpace, Mode, build_store

Worker = tuple[FailoverStore, SessionManager]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def workers(fresh_redis: RedisServer, clock: Clock) -> AsyncIterator[Callable[..., Worker]]:
    """Start a worker (a store and its session manager) on the test's Redis; `overrides`
    go to its settings (a host tier's path, say)."""
    stores: list[FailoverStore] = []

    def start(**overrides: object) -> Worker:
        store = build_store(quick_failover_settings(fresh_redis.url, **overrides), clock=clock)
        stores.append(store)
        manager = SessionManager(
            store, KeySpace("upak:"), idle_timeout=3600, max_age=86_400, clock=clock
        )
        return store, manager

    yield start
    for store in stores:
        await store.close()


async def outage(store: FailoverStore) -> None:
    """Make `store` notice the outage now (the first failing call trips it)."""
    await store.ping()
    assert store.mode is Mode.MEMORY


def session_keys(server: RedisServer) -> list[bytes]:
    return sorted(server.client().keys("upak:sessions:*:s:*"))


async def test_sessions_created_during_an_outage_reach_redis(
    workers, fresh_redis: RedisServer, clock: Clock
) -> None:
    (store_a, a), (store_b, b) = workers(), workers()
    await store_a.start()
    await store_b.start()
    fresh_redis.kill()
    await outage(store_a)
    issued = await a.create(1, ip="10.0.0.1", user_agent="outage")
    assert await a.resolve(cookie(issued)) is not None  # works where it was made
    clock.advance(120)  # two minutes of outage pass
    fresh_redis.start()  # an empty Redis
    await wait_for_mode(store_a, Mode.REDIS, within=3.0)
    await wait_for_mode(store_b, Mode.REDIS, within=3.0)
    key = a._session_key(1, issued.session.handle)
    # The TTL written back is what was left of the idle timeout, not a fresh hour.
    assert 3_470_000 < fresh_redis.client().pttl(key) <= 3_481_000
    session = await b.resolve(cookie(issued))  # and on the other worker after recovery
    assert session is not None and session.user_agent == "outage"


async def test_revocations_during_an_outage_reach_redis(
    workers, fresh_redis: RedisServer, clock: Clock
) -> None:
    (store_a, a), (store_b, b) = workers(), workers()
    await store_a.start()
    kept, revoked, revoked_too = [await a.create(2) for _ in range(3)]
    for each in (kept, revoked, revoked_too):
        assert await a.resolve(cookie(each)) is not None  # mirrored into a's memory
    fresh_redis.pause()
    try:
        await outage(store_a)
        assert await a.revoke(2, revoked.session.handle) is True
        assert await a.revoke_others(2, kept.session.handle) == 1
        assert await a.resolve(cookie(revoked_too)) is None
    finally:
        fresh_redis.resume()
    await wait_for_mode(store_a, Mode.REDIS, within=3.0)
    await store_b.start()
    assert await b.resolve(cookie(kept)) is not None
    assert await b.resolve(cookie(revoked)) is None
    assert await b.resolve(cookie(revoked_too)) is None
    assert [s.handle for s in await b.list(2)] == [kept.session.handle]


async def test_a_user_active_before_the_outage_stays_logged_in(
    workers, fresh_redis: RedisServer, clock: Clock
) -> None:
    (store_a, a), (_, b) = workers(), workers()
    await store_a.start()
    issued = await b.create(3)  # logged in through the other worker
    clock.advance(60)
    assert await a.resolve(cookie(issued)) is not None  # then used here: mirrored
    fresh_redis.pause()
    try:
        await outage(store_a)
        clock.advance(300)
        session = await a.resolve(cookie(issued))
        assert session is not None and session.user_id == 3
        assert [s.handle for s in await a.list(3)] == [issued.session.handle]
    finally:
        fresh_redis.resume()


async def test_the_mirror_forgets_what_redis_revoked(
    workers, fresh_redis: RedisServer, clock: Clock
) -> None:
    (store_a, a), (_, b) = workers(), workers()
    await store_a.start()
    issued = await a.create(4)
    assert await a.resolve(cookie(issued)) is not None
    await b.revoke(4, issued.session.handle)  # logged out through the other worker
    assert await a.resolve(cookie(issued)) is None  # Redis says gone: the copy goes too
    fresh_redis.pause()
    try:
        await outage(store_a)
        assert await a.resolve(cookie(issued)) is None
    finally:
        fresh_redis.resume()


async def test_touches_written_back_never_resurrect(
    workers, fresh_redis: RedisServer, clock: Clock
) -> None:
    """Worker a keeps using a mirrored session through an outage only a saw, while worker b
    revoked it on Redis: a's journaled touches must not bring it back."""
    (store_a, a), (_, b) = workers(), workers()
    store_a.backoff_min = 0.5  # time to act before its probe finds Redis up
    await store_a.start()
    issued = await a.create(5)
    assert await a.resolve(cookie(issued)) is not None
    store_a._trip(ConnectionError("simulated: only this worker lost Redis"))
    await b.revoke(5, issued.session.handle)
    for _ in range(3):
        clock.advance(120)
        assert await a.resolve(cookie(issued)) is not None  # per-process memory: still there
    assert store_a.stats.pending_writeback == 3  # the touches
    await wait_for_mode(store_a, Mode.REDIS, within=3.0)
    assert session_keys(fresh_redis) == []
    assert await a.resolve(cookie(issued)) is None


async def test_the_mirror_is_bounded(
    workers, fresh_redis: RedisServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feature.mirror, "MIRROR_MAX_SESSIONS", 3)  # where _mirror reads it
    (store_a, a) = workers()
    await store_a.start()
    issued = [await a.create(100 + i) for i in range(5)]
    for each in issued:
        assert await a.resolve(cookie(each)) is not None
    mirrored = [k for k in store_a.memory.data.keys() if ":s:" in k]  # noqa: SIM118
    assert len(mirrored) == 3  # the three most recently used
    fresh_redis.pause()
    try:
        await outage(store_a)
        alive = [await a.resolve(cookie(each)) is not None for each in issued]
        assert alive == [False, False, True, True, True]
    finally:
        fresh_redis.resume()


async def test_the_mirror_lasts_minutes_not_the_whole_session(
    workers, fresh_redis: RedisServer, clock: Clock
) -> None:
    (store_a, a) = workers()
    await store_a.start()
    issued = await a.create(6)
    assert await a.resolve(cookie(issued)) is not None
    fresh_redis.pause()
    try:
        await outage(store_a)
        clock.advance(feature.MIRROR_TTL_MS / 1000 + 1)
        # Not used for longer than the mirror keeps a copy: this worker no longer knows it.
        assert await a.resolve(cookie(issued)) is None
    finally:
        fresh_redis.resume()
    await wait_for_mode(store_a, Mode.REDIS, within=3.0)
    assert await a.resolve(cookie(issued)) is not None  # Redis still has it


def test_mirror_cost_per_session_is_small() -> None:
    """What the bound costs: bytes of process memory per mirrored session (tracemalloc)."""
    import tracemalloc

    from upak.store import MemoryData

    data = MemoryData(max_keys=1_000_000)
    now = int(time.time() * 1000)
    fields = {b"c": b"%d" % now, b"s": b"%d" % now, b"a": b"%d" % (now + 10**9)}
    fields |= {b"i": b"203.0.113.77", b"ua": b"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"}
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2000):
        keys = [f"upak:sessions:{{u{i}}}:s:{i:032x}", f"upak:sessions:{{u{i}}}:index"]
        feature._mirror(data, keys, f"{i:032x}", fields, 3_600_000, now)
    per_session = (tracemalloc.get_traced_memory()[0] - before) / 2000
    tracemalloc.stop()
    assert per_session < 3000, per_session

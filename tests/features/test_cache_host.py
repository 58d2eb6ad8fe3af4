"""Caching per host during an outage: the workers of a one-host service (two FailoverStores
on one host tier) share one cache while Redis is away, see each other's invalidations, and
carry nothing of it past the outage. Several hosts, or process memory, keep caching off."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.features.test_cache import Clock, Source
from tests.store.test_failover import quick_failover_settings, wait_for_mode
from tests.store.test_host import lock_holder
from tests.store.test_host_failover import outage
from tests.support.redis_servers import RedisServer
from upak.features.cache import READ, WRITE, Cache, user_tag
from upak.features.cache.operations import Write
from upak.store import FailoverStore, KeySpace, Mode, build_store
from upak.store.host import CACHE, Budgets, HostData, HostStore, HostTier
from upak.store.journal import Outage
from upak.store.memory import NOT_SERVED, MemoryStore
from upak.store.operation import NO_ARGS
from upak.store.primitives import SET, Expiring

Worker = tuple[FailoverStore, Cache]


@pytest.fixture
async def host(fresh_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Callable[..., Worker]]:
    """A worker of the host whose tier is at `tmp_path / "host"`: its store and its cache."""
    stores: list[FailoverStore] = []
    clock = Clock()

    def start(**overrides: object) -> Worker:
        settings = quick_failover_settings(
            fresh_redis.url, upak_fallback_path=str(tmp_path / "host"), **overrides
        )
        store = build_store(settings, clock=clock)
        assert isinstance(store.memory, HostStore)
        stores.append(store)
        return store, Cache(store, KeySpace("upak:"), default_ttl=60, clock=clock)

    yield start
    for store in stores:
        await store.close()


async def test_the_host_s_workers_share_one_cache_in_an_outage(
    host, fresh_redis: RedisServer
) -> None:
    (store_a, a), (store_b, b) = host(), host()
    fresh_redis.kill()
    await outage(store_a, store_b)
    source = Source("plans")
    assert await a.get_or_compute("plans", source) == "plans"
    assert await b.get_or_compute("plans", source) == "plans"  # a hit: a's entry, in the tier
    assert await a.get_or_compute("plans", source) == "plans"
    assert source.calls == 1
    assert store_b.stats.host_cached_calls > 0
    assert b.stats.bypasses == 0


async def test_an_invalidation_on_one_worker_reaches_the_other_in_an_outage(
    host, fresh_redis: RedisServer
) -> None:
    (store_a, a), (store_b, b) = host(), host()
    fresh_redis.kill()
    await outage(store_a, store_b)
    before, after = Source("free plan"), Source("paid plan")
    assert await a.get_or_compute("me:7", before, tags=[user_tag(7)]) == "free plan"
    await b.invalidate_user(7)  # a payment processed by the other worker
    assert await a.get_or_compute("me:7", after, tags=[user_tag(7)]) == "paid plan"
    assert (before.calls, after.calls) == (1, 1)


async def test_nothing_cached_in_an_outage_is_served_in_the_next_one(
    host, fresh_redis: RedisServer
) -> None:
    store, cache = host()
    await store.start()
    fresh_redis.kill()
    await outage(store)
    assert await cache.get_or_compute("me:8", Source("free plan"), tags=[user_tag(8)]) == (
        "free plan"
    )
    assert isinstance(store.memory, HostStore)
    assert store.memory.tier.used(CACHE) > 0
    fresh_redis.start()
    await wait_for_mode(store, Mode.REDIS, within=5.0)
    assert store.memory.tier.used(CACHE) == 0  # dropped with the outage
    await cache.invalidate_user(8)  # while Redis is up: Redis only, never the tier
    fresh_redis.kill()
    await outage(store)
    fresh = Source("paid plan")
    assert await cache.get_or_compute("me:8", fresh, tags=[user_tag(8)]) == "paid plan"
    assert fresh.calls == 1


async def test_several_hosts_keep_caching_off(host, fresh_redis: RedisServer) -> None:
    # Another host's invalidation would never reach this tier: no cache in it.
    (store_a, a), (store_b, b) = (host(rate_limit_fallback_divisor=2) for _ in range(2))
    fresh_redis.kill()
    await outage(store_a, store_b)
    source = Source("plans")
    assert await a.get_or_compute("plans", source) == "plans"
    assert await b.get_or_compute("plans", source) == "plans"
    assert source.calls == 2
    assert store_b.stats.host_cached_calls == 0 and store_b.stats.bypassed_calls > 0


# --- the tier's side, without Redis ---

ENTRY = "upak:cache:{e:plans}"
PART = "redis://test"


def tier_store(path: Path, **budgets: int) -> HostStore:
    return HostStore(HostTier(path, "tier", budgets=Budgets(**budgets)), caches=True)


def write(store: HostStore, key: str = ENTRY, blob: bytes = b"x" * 100) -> object:
    return store.execute_cached(WRITE, [key, key + ":lease"], Write(blob, 60_000, ""), PART)


def test_a_worker_still_on_the_fallback_caches_nothing_once_the_host_is_up(
    tmp_path: Path,
) -> None:
    store = tier_store(tmp_path)
    assert write(store) is NOT_SERVED  # the host is not down: nothing to cache for
    store.mark_down(PART, Outage("unreachable", 0.0))
    assert write(store) == 1
    assert store.mark_up(PART, now=1.0)
    assert HostData(store.tier).get(ENTRY) is None  # the outage's entries went with it
    assert write(store) is NOT_SERVED  # a straggler that has not followed the host up yet


def test_process_memory_never_caches_in_an_outage() -> None:
    memory = MemoryStore()
    memory.mark_down(PART, Outage("unreachable", 0.0))
    assert memory.execute_cached(WRITE, [ENTRY, ENTRY + ":lease"], Write(b"x", 1, ""), PART) is (
        NOT_SERVED
    )


def test_a_flood_of_cache_entries_cannot_evict_sessions(tmp_path: Path) -> None:
    store = tier_store(tmp_path, main=100_000, cache=20_000)
    store.mark_down(PART, Outage("unreachable", 0.0))
    store.execute(SET, ["upak:sessions:{u1}:s:h"], Expiring("s" * 200, 60_000))
    for i in range(1_000):
        write(store, f"upak:cache:{{e:page{i}}}")
    assert store.tier.used(CACHE) <= 20_000
    assert HostData(store.tier).get("upak:sessions:{u1}:s:h") == b"s" * 200


def test_a_cache_hit_reads_the_tier_without_its_write_lock(tmp_path: Path) -> None:
    # A hit only reads: it must not queue behind writers (nor count as "tier busy").
    store = tier_store(tmp_path)
    store.mark_down(PART, Outage("unreachable", 0.0))
    assert write(store) == 1
    for _ in lock_holder(tmp_path / "tier.lock"):
        assert store.execute_cached(READ, [ENTRY], NO_ARGS, PART) == b"x" * 100
        assert write(store) is NOT_SERVED  # a write does need the lock: not cached
    assert store.unlocked_calls == 1

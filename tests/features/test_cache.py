"""The cache on both twins (memory, a real Redis): operations, single-flight, tags, decoding."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer
from upak.features.cache import (
    BYPASSED,
    LEASE,
    READ,
    RELEASE,
    STAMP,
    WRITE,
    Cache,
    pack_entry,
    unpack_entry,
    user_key,
    user_tag,
)
from upak.features.cache import client as client_module
from upak.features.cache.operations import Holder, Lease, Stamp, Write
from upak.store import ClusterFailoverStore, FailoverStore, KeySpace, Store, build_store
from upak.store.operation import NO_ARGS
from upak.store.primitives import DELETE, SET, Expiring


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Source:
    """A slow source that counts its calls and yields to the loop like a DB query would."""

    def __init__(self, value: object = "v") -> None:
        self.value = value
        self.calls = 0

    async def __call__(self) -> object:
        self.calls += 1
        for _ in range(5):
            await asyncio.sleep(0)
        return self.value


def keyspace(store: Store, key_prefix: str) -> KeySpace:
    return KeySpace("upak:" + key_prefix)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def cache(any_store: Store, key_prefix: str, clock: Clock) -> AsyncIterator[Cache]:
    yield Cache(any_store, keyspace(any_store, key_prefix), default_ttl=60, clock=clock)
    if isinstance(any_store, FailoverStore | ClusterFailoverStore):
        # A script refused by Redis (CROSSSLOT on a Cluster) would look like an outage and
        # quietly turn caching off: on a healthy Redis nothing may have gone to the fallback.
        assert any_store.stats.fallback_calls == 0, any_store.stats.last_error


@contextlib.asynccontextmanager
async def second_process(url: str, key_prefix: str, clock: Clock) -> AsyncIterator[Cache]:
    store = build_store(make_settings(redis_url=url, redis_key_prefix=key_prefix))
    await store.start()
    try:
        yield Cache(store, KeySpace("upak:" + key_prefix), default_ttl=60, clock=clock)
    finally:
        await store.close()


# --- the operations' contract, same assertions on both twins ------------------------------


async def test_operations_contract(any_store: Store, key_prefix: str) -> None:
    keys = keyspace(any_store, key_prefix)
    entry, lease = keys.tagged("cache", "e:k"), keys.tagged("cache", "e:k", "lease")
    tag = keys.tagged("cache", "t:x")

    assert await any_store.run(READ, [entry], NO_ARGS) is None
    # STAMP creates the version once and returns the existing one after.
    assert await any_store.run(STAMP, [tag], Stamp("tok1", 10_000)) == b"tok1"
    assert await any_store.run(STAMP, [tag], Stamp("tok2", 10_000)) == b"tok1"
    await any_store.run(SET, [tag], Expiring("tok3", 10_000))  # invalidation: a fresh version
    assert await any_store.run(STAMP, [tag], Stamp("tok4", 10_000)) == b"tok3"
    # The lease goes to one caller; WRITE stores the entry and releases only our own lease.
    assert await any_store.run(LEASE, [lease], Lease("me", 10_000)) is True
    assert await any_store.run(LEASE, [lease], Lease("other", 10_000)) is False
    assert await any_store.run(WRITE, [entry, lease], Write(b"blob", 10_000, "other")) is True
    assert await any_store.run(LEASE, [lease], Lease("third", 10_000)) is False  # still mine
    assert await any_store.run(WRITE, [entry, lease], Write(b"blob2", 10_000, "me")) is True
    assert await any_store.run(READ, [entry], NO_ARGS) == b"blob2"
    assert await any_store.run(LEASE, [lease], Lease("third", 10_000)) is True
    assert await any_store.run(RELEASE, [lease], Holder("me")) is False
    assert await any_store.run(RELEASE, [lease], Holder("third")) is True
    assert await any_store.run(DELETE, [entry], NO_ARGS) is True
    assert await any_store.run(DELETE, [entry], NO_ARGS) is False
    assert await any_store.run(READ, [entry], NO_ARGS) is None


async def test_stamp_extends_a_short_lived_version(any_store: Store, key_prefix: str) -> None:
    tag = keyspace(any_store, key_prefix).tagged("cache", "t:x")
    await any_store.run(SET, [tag], Expiring("tok", 50))
    assert await any_store.run(STAMP, [tag], Stamp("new", 60_000)) == b"tok"
    # Still there after the original 50 ms: the stamp pushed its expiry out.
    await asyncio.sleep(0.08)
    assert await any_store.run(READ, [tag], NO_ARGS) == b"tok"


# --- get / set / delete --------------------------------------------------------------------


async def test_set_get_delete_and_ttl(cache: Cache, clock: Clock) -> None:
    assert await cache.get("k") is None
    assert await cache.set("k", {"a": [1, 2], "b": "ü"}) is True
    assert await cache.get("k") == {"a": [1, 2], "b": "ü"}
    clock.now += 59
    assert await cache.get("k") == {"a": [1, 2], "b": "ü"}
    clock.now += 2  # default TTL (REDIS_TTL, here 60 s) passed
    assert await cache.get("k", "gone") == "gone"
    await cache.set("k", 1, ttl=5)
    assert await cache.delete("k") is True
    assert await cache.get("k") is None


async def test_json_and_msgpack(cache: Cache) -> None:
    await cache.set("j", {"n": 1, "s": "x"}, codec="json")
    await cache.set("m", {"n": 1, "raw": b"\x00\xff"}, codec="msgpack")
    assert await cache.get("j") == {"n": 1, "s": "x"}
    assert await cache.get("m") == {"n": 1, "raw": b"\x00\xff"}
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        await cache.set("bad", {1, 2}, codec="json")
    with pytest.raises(TypeError, match="not msgpack-serialisable"):
        await cache.set("bad", object())


async def test_unsafe_names_are_refused(cache: Cache) -> None:
    for bad in ("", "a b", "x{y}", "é", "k" * 201):
        with pytest.raises(ValueError, match="printable ASCII"):
            await cache.get(bad)
    with pytest.raises(ValueError, match="user id"):
        user_key(None, "me")
    # Odd user ids are hashed, never refused and never able to move the hash tag.
    assert "{" not in user_key("a}b{c", "me") and user_tag("a b") != user_tag("a_b")


# --- corrupt entries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "blob",
    [
        b"garbage",
        b"\x93\x01\x02\x03",  # valid msgpack, wrong shape
        pack_entry(b"{not json", "json", 2**50, {}),
        pack_entry(b"\xc1", "msgpack", 2**50, {}),  # 0xc1 is never valid msgpack
        b"\x80\x04\x95pickle",  # a pickle is just garbage to us
    ],
)
async def test_a_corrupt_entry_is_a_logged_miss(
    cache: Cache, blob: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    await cache.store.set(cache.entry_key("k"), blob, 60_000)
    source = Source("fresh")
    with caplog.at_level(logging.WARNING, "upak.cache"):
        assert await cache.get_or_compute("k", source) == "fresh"
    assert source.calls == 1 and cache.stats.decode_errors == 1 and cache.stats.misses == 1
    assert "could not be decoded" in caplog.text
    # The computation overwrote it: a hit now.
    assert await cache.get_or_compute("k", source) == "fresh" and source.calls == 1
    assert cache.stats.hits == 1


def test_entry_round_trip() -> None:
    entry = unpack_entry(pack_entry(b"[1]", "json", 42, {"t": b"x"}))
    assert entry.value == [1] and entry.fresh_until_ms == 42 and entry.stamps == {"t": b"x"}


# --- single-flight -------------------------------------------------------------------------


async def test_100_concurrent_misses_compute_once(cache: Cache) -> None:
    source = Source({"plans": [1, 2, 3]})
    results = await asyncio.gather(*(cache.get_or_compute("hot", source) for _ in range(100)))
    assert source.calls == 1
    assert all(r == {"plans": [1, 2, 3]} for r in results)
    assert cache.stats.misses == 100 and cache.stats.local_waits == 99
    assert cache.stats.computes == 1


async def test_a_failing_computation_reaches_every_waiter_and_caches_nothing(
    cache: Cache,
) -> None:
    calls = 0

    async def boom() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise RuntimeError("source down")

    results = await asyncio.gather(
        *(cache.get_or_compute("k", boom) for _ in range(10)), return_exceptions=True
    )
    assert calls == 1 and all(isinstance(r, RuntimeError) for r in results)
    # The lease was given back: the next caller computes at once.
    assert await cache.get_or_compute("k", Source("ok")) == "ok"


async def test_a_cancelled_caller_does_not_cancel_the_others(cache: Cache) -> None:
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "done"

    first = asyncio.create_task(cache.get_or_compute("k", slow))
    second = asyncio.create_task(cache.get_or_compute("k", slow))
    for _ in range(20):
        await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == "done"
    with pytest.raises(asyncio.CancelledError):
        await first


@pytest.mark.parametrize("any_store", ["redis"], indirect=True)
async def test_across_processes_one_computes_and_the_other_waits(
    cache: Cache, shared_redis: RedisServer, key_prefix: str, clock: Clock
) -> None:
    async with second_process(shared_redis.url, key_prefix, clock) as other:
        other.lease_poll = 0.005
        source = Source("v")
        gate = asyncio.Event()

        async def slow() -> object:
            await gate.wait()
            return await source()

        here = [asyncio.create_task(cache.get_or_compute("k", slow)) for _ in range(50)]
        there = [asyncio.create_task(other.get_or_compute("k", slow)) for _ in range(50)]
        await asyncio.sleep(0.05)  # both processes are in: one holds the lease
        gate.set()
        results = await asyncio.gather(*here, *there)
        assert results == ["v"] * 100
        assert source.calls == 1  # once across both "processes"
        assert cache.stats.lease_waits + other.stats.lease_waits == 1


# --- tags ----------------------------------------------------------------------------------


async def test_invalidating_a_tag_removes_its_entries_only(cache: Cache) -> None:
    await cache.set("a", 1, tags=["plans"])
    await cache.set("b", 2, tags=["plans", "user:1"])
    await cache.set("c", 3, tags=["user:1"])
    await cache.set("d", 4)
    await cache.invalidate("plans")
    assert [await cache.get(k) for k in "abcd"] == [None, None, 3, 4]
    await cache.invalidate_user(1)
    assert await cache.get("c") is None and await cache.get("d") == 4
    assert cache.stats.invalidations == 2


async def test_an_entry_computed_across_an_invalidation_is_dead(cache: Cache) -> None:
    db = {"expiry": "2025-01-01"}
    started, release = asyncio.Event(), asyncio.Event()

    async def read_db() -> str:
        value = db["expiry"]  # read before the payment lands
        started.set()
        await release.wait()
        return value

    task = asyncio.create_task(cache.get_or_compute("me", read_db, tags=["user:7"]))
    await started.wait()
    db["expiry"] = "2026-01-01"  # the payment: source first, then the invalidation
    await cache.invalidate("user:7")
    release.set()
    assert await task == "2025-01-01"  # that caller raced; the entry it wrote is dead
    assert await cache.get("me") is None
    assert await cache.get_or_compute("me", read_db, tags=["user:7"]) == "2026-01-01"


async def _race(caches: list[Cache], keys: int = 100) -> None:
    """100 concurrent tagged writes (half get_or_compute, half set) racing one invalidation."""
    db = {"version": "old"}
    computed: dict[str, str] = {}
    some_read = asyncio.Event()

    async def read_db(key: str) -> str:
        value = computed[key] = db["version"]
        if len(computed) == keys // 3:
            some_read.set()
        for _ in range(3):
            await asyncio.sleep(0)
        return value

    async def writer(i: int) -> None:
        cache, key = caches[i % len(caches)], f"k{i}"
        for _ in range(i % 9):
            await asyncio.sleep(0)
        if i % 2:
            await cache.get_or_compute(key, lambda: read_db(key), tags=["plans", f"x{i % 3}"])
        else:
            snapshot = await cache.snapshot(["plans"])  # before reading the source
            await cache.set(key, await read_db(key), tags=snapshot)

    async def invalidator() -> None:
        await some_read.wait()  # a third have read the old data; the rest are on their way
        db["version"] = "new"  # the source changes first, then the tag is invalidated
        await caches[0].invalidate("plans")

    await asyncio.gather(*(writer(i) for i in range(keys)), invalidator())
    # The race was real: some writers computed from the old data, some from the new.
    assert set(computed.values()) == {"old", "new"}, computed
    for cache in caches:
        values = {f"k{i}": await cache.get(f"k{i}") for i in range(keys)}
        stale = [k for k, v in values.items() if v == "old"]
        assert not stale, f"entries survived the invalidation they raced: {stale}"
        assert set(values.values()) <= {"new", None}
    # And the tag still caches: recomputed under the new version, then a hit.
    assert await caches[0].get_or_compute("k0", lambda: read_db("again")) == "new"
    assert await caches[-1].get("k0") == "new"


async def test_tag_invalidation_racing_100_concurrent_writes(cache: Cache) -> None:
    await _race([cache])


@pytest.mark.parametrize("any_store", ["redis"], indirect=True)
async def test_tag_invalidation_racing_writes_from_two_processes(
    cache: Cache, shared_redis: RedisServer, key_prefix: str, clock: Clock
) -> None:
    async with second_process(shared_redis.url, key_prefix, clock) as other:
        await _race([cache, other])


async def test_a_lost_tag_version_never_revives_old_entries(cache: Cache) -> None:
    await cache.set("k", "old", tags=["t"])
    # The version key evicted or expired: entries stamped under it are dead, not revived.
    await cache.store.run(DELETE, [cache.tag_key("t")], NO_ARGS)
    assert await cache.get("k") is None


# --- stale-while-revalidate ----------------------------------------------------------------


async def test_stale_entry_is_served_while_one_caller_refreshes(cache: Cache, clock: Clock) -> None:
    source = Source("v1")
    assert await cache.get_or_compute("k", source, ttl=10, stale_ttl=60) == "v1"
    clock.now += 11  # past the soft TTL, within the stale window
    source.value = "v2"
    results = await asyncio.gather(
        *(cache.get_or_compute("k", source, ttl=10, stale_ttl=60) for _ in range(20))
    )
    assert results == ["v1"] * 20  # nobody waited for the source
    await cache.drain()
    assert source.calls == 2  # one refresh for 20 stale reads
    assert cache.stats.stale_hits == 20
    assert await cache.get_or_compute("k", source, ttl=10, stale_ttl=60) == "v2"


async def test_without_stale_ttl_an_expired_entry_is_a_miss(cache: Cache, clock: Clock) -> None:
    source = Source("v1")
    await cache.get_or_compute("k", source, ttl=10)
    clock.now += 11
    source.value = "v2"
    assert await cache.get_or_compute("k", source, ttl=10) == "v2"


# --- the decorator -------------------------------------------------------------------------


async def test_decorator_keys_by_arguments_and_user(cache: Cache) -> None:
    calls: list[tuple[object, ...]] = []

    @cache.cached("plans", user=None, tags=["plans"])
    async def plans(currency: str, active: bool = True) -> list[str]:
        calls.append((currency, active))
        return [currency]

    @cache.cached("me", user="user_id", key_args=())
    async def me(user_id: int, session: object = None) -> dict[str, int]:
        calls.append(("me", user_id))
        return {"id": user_id}

    assert await plans("RUB") == ["RUB"] and await plans("RUB", True) == ["RUB"]
    assert await plans(currency="USD") == ["USD"]
    assert await plans("RUB", active=False) == ["RUB"]
    assert calls == [("RUB", True), ("USD", True), ("RUB", False)]

    # Per-user: the id is always in the key; an unhashable session arg is excluded.
    assert await me(1, object()) == {"id": 1} and await me(2) == {"id": 2}
    assert await me(1) == {"id": 1}
    assert calls[3:] == [("me", 1), ("me", 2)]
    await cache.invalidate_user(1)
    assert await me(1) == {"id": 1} and await me(2) == {"id": 2}
    assert calls[5:] == [("me", 1)]
    with pytest.raises(ValueError, match="user id"):
        await me(None)  # type: ignore[arg-type]


async def test_decorator_refuses_ambiguous_keys(cache: Cache) -> None:
    with pytest.raises(TypeError, match="no 'uid'"):

        @cache.cached("x", user="uid")
        async def f(user_id: int) -> int:
            return user_id

    @cache.cached("y", user=None)
    async def g(thing: object) -> int:
        return 1

    with pytest.raises(TypeError, match="JSON values"):
        await g(object())


# --- outage: caching is disabled -----------------------------------------------------------


@pytest.fixture
async def outage_store(fresh_redis: RedisServer, key_prefix: str) -> AsyncIterator[FailoverStore]:
    store = build_store(
        make_settings(
            redis_url=fresh_redis.url,
            redis_key_prefix=key_prefix,
            redis_socket_timeout=0.2,
            redis_connect_timeout=0.2,
            redis_health_interval=0.05,
        )
    )
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_redis_killed_reads_go_to_the_source_then_hits_after_recovery(
    outage_store: FailoverStore, fresh_redis: RedisServer, key_prefix: str
) -> None:
    cache = Cache(outage_store, KeySpace("upak:" + key_prefix), default_ttl=60)
    source = Source("v")
    assert await cache.get_or_compute("k", source) == "v"
    assert await cache.get_or_compute("k", source) == "v" and source.calls == 1

    fresh_redis.kill()
    for _ in range(20):  # every read reaches the source, none fails
        assert await cache.get_or_compute("k", source, tags=["t"]) == "v"
    assert await cache.set("other", 1) is False and await cache.get("other") is None
    assert source.calls == 21
    assert cache.stats.bypasses >= 20
    assert outage_store.stats.bypassed_calls >= 20
    # Caching is off, not moved: no cached value in process memory.
    cached_in_memory = [k for k in outage_store.memory.data.keys() if ":{e:" in k]  # noqa: SIM118
    assert not cached_in_memory

    fresh_redis.start()
    await wait_for(lambda: outage_store.mode.value == "redis")
    assert await cache.get_or_compute("k", source) == "v"  # a miss (Redis lost its data)
    calls = source.calls
    for _ in range(5):
        assert await cache.get_or_compute("k", source) == "v"
    assert source.calls == calls  # hits again


@pytest.mark.slow
async def test_an_invalidation_during_an_outage_is_written_back(
    outage_store: FailoverStore, fresh_redis: RedisServer, key_prefix: str
) -> None:
    cache = Cache(outage_store, KeySpace("upak:" + key_prefix), default_ttl=60)
    await cache.set("me", "old expiry", tags=[user_tag(7)])
    await cache.set("plain", "old")
    fresh_redis.pause()  # Redis keeps its data but stops answering
    try:
        await wait_for(lambda: outage_store.mode.value == "memory")
        await cache.invalidate_user(7)  # a payment processed during the outage
        await cache.delete("plain")
    finally:
        fresh_redis.resume()
    await wait_for(lambda: outage_store.mode.value == "redis")
    assert await cache.get("me") is None and await cache.get("plain") is None


# --- Redis Cluster: every script stays in one slot -----------------------------------------


@pytest.mark.slow
async def test_cache_on_a_cluster(cluster, key_prefix: str) -> None:
    store = build_store(make_settings(redis_url=cluster.url))
    await store.start()
    try:
        cache = Cache(store, KeySpace("upak:" + key_prefix), default_ttl=60)
        source = Source("v")
        results = await asyncio.gather(
            *(
                cache.get_or_compute(f"k{i % 10}", source, tags=["plans", f"user:{i}"])
                for i in range(100)
            )
        )
        assert results == ["v"] * 100 and source.calls <= 100
        assert await cache.get("k1") == "v"
        await cache.invalidate("plans")
        assert [await cache.get(f"k{i}") for i in range(10)] == [None] * 10
        await _race([cache])
        assert store.stats.fallback_calls == 0  # no CROSSSLOT, no outage
    finally:
        await store.close()


def test_bypass_replies_are_markers() -> None:
    assert READ.bypass is not None and READ.bypass(()) is BYPASSED
    assert LEASE.bypass is not None and LEASE.bypass(()) is True


async def test_an_unstorable_value_fails_loudly_and_frees_the_lease(cache: Cache) -> None:
    async def not_json() -> set[int]:
        return {1}

    with pytest.raises(TypeError, match="not JSON-serialisable"):
        await cache.get_or_compute("k", not_json, codec="json")
    assert await cache.get_or_compute("k", Source("ok"), codec="json") == "ok"


def count_reads(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the READ calls `cache` sends to its store from now on; call the result to ask."""
    reads = 0
    run = cache.store.run

    async def counting(op, keys, args=()):
        nonlocal reads
        reads += op is READ
        return await run(op, keys, args)

    monkeypatch.setattr(cache.store, "run", counting)
    return lambda: reads


async def test_concurrent_hits_share_one_read(cache: Cache, monkeypatch) -> None:
    await cache.set("hot", {"n": 1}, tags=["plans"])
    reads = count_reads(cache, monkeypatch)
    results = await asyncio.gather(
        *(cache.get_or_compute("hot", Source(), tags=["plans"]) for _ in range(64))
    )
    assert results == [{"n": 1}] * 64 and cache.stats.hits == 64
    assert reads() == 2  # the entry and its tag, once for all 64 callers
    results[0]["n"] = 2  # each caller decoded its own copy
    assert results[1] == {"n": 1}


async def test_a_read_started_after_an_invalidation_never_joins_an_older_one(
    cache: Cache, monkeypatch
) -> None:
    await cache.set("me", "old expiry", tags=["user:7"])
    run, held, release = cache.store.run, asyncio.Event(), asyncio.Event()

    async def slow_replies(op, keys, args=()):
        reply = await run(op, keys, args)  # Redis has answered...
        if op is READ and not release.is_set():
            held.set()
            await release.wait()  # ...but the reply is still on its way back
        return reply

    monkeypatch.setattr(cache.store, "run", slow_replies)
    source = Source("new expiry")

    def read_me() -> asyncio.Task[object]:
        return asyncio.create_task(cache.get_or_compute("me", source, tags=["user:7"]))

    in_flight = [read_me() for _ in range(10)]
    await held.wait()  # those reads saw the old entry and the old tag version
    await cache.invalidate("user:7")  # the webhook's invalidation returned
    late = read_me()  # a read that starts now
    for _ in range(10):
        await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*in_flight) == ["old expiry"] * 10  # they started before
    assert await late == "new expiry"


async def test_drain_gives_up_on_a_hung_refresh(cache: Cache, clock: Clock) -> None:
    await cache.get_or_compute("k", Source("v1"), ttl=10, stale_ttl=60)
    clock.now += 11
    hang = asyncio.Event()

    async def hung() -> str:
        await hang.wait()
        return "never"

    assert await cache.get_or_compute("k", hung, ttl=10, stale_ttl=60) == "v1"
    await cache.drain(grace=0.05)
    await asyncio.sleep(0)
    assert not cache._refreshing


async def test_a_prefetched_read_counts_nothing_until_a_lookup_uses_it(
    cache: Cache, monkeypatch
) -> None:
    await cache.set("hot", {"n": 1}, tags=["plans"])
    reads = count_reads(cache, monkeypatch)
    read = cache.prefetch("hot", ["plans"])
    await asyncio.wait([read])
    assert reads() == 2 and cache.stats.hits == 0  # read, not counted: it may be dropped
    found = await cache.get_or_compute("hot", Source(), tags=["plans"], prefetched=read)
    assert found == {"n": 1} and cache.stats.hits == 1
    assert reads() == 2  # the lookup used the prefetched replies, it sent nothing itself


async def test_a_dropped_prefetch_whose_read_failed_is_not_reported_unretrieved(
    cache: Cache, monkeypatch, caplog
) -> None:
    async def failing(op, keys, args=()):
        raise RuntimeError("the read failed")

    monkeypatch.setattr(cache.store, "run", failing)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        dropped = cache.prefetch("hot", ["plans"])  # its request was refused: nobody asks
        await asyncio.wait([dropped])
        del dropped
        gc.collect()
    assert "never retrieved" not in caplog.text


async def test_immutable_hits_of_unchanged_bytes_share_one_decoded_value(
    cache: Cache, any_store: Store, key_prefix: str, clock: Clock, monkeypatch
) -> None:
    """`immutable=True`: the same entry bytes are decoded once per process; new bytes (another
    process's write) or a new tag version (an invalidation) are seen on the next lookup."""
    decoded = 0
    real_unpack = client_module.unpack_entry

    def counting_unpack(blob: bytes):
        nonlocal decoded
        decoded += 1
        return real_unpack(blob)

    monkeypatch.setattr(client_module, "unpack_entry", counting_unpack)

    class Doc(tuple):  # loaded by a classmethod: a new bound method at every lookup
        @classmethod
        def load(cls, raw: object) -> tuple:
            return tuple(raw)  # type: ignore[call-overload]

    async def hit(source: Source) -> object:
        return await cache.get_or_compute(
            "doc", source, tags=["t"], load=Doc.load, dump=list, immutable=True
        )

    first = await hit(Source(["a"]))  # computed, stored
    hits = [await hit(Source()) for _ in range(3)]
    assert hits[0] == ("a",) and all(found is hits[0] for found in hits)
    assert decoded == 1  # the three hits read the same bytes: decoded once
    assert first == ["a"]  # the computation's own value, as computed
    # Another process rewrites the entry (same tags, new bytes): read and decoded anew.
    other = Cache(any_store, keyspace(any_store, key_prefix), default_ttl=60, clock=clock)
    clock.now += 61  # past the first entry's freshness, so `other` computes
    rewritten = await other.get_or_compute(
        "doc", Source(["b"]), tags=["t"], load=Doc.load, dump=list
    )
    assert rewritten == ["b"]
    assert await hit(Source()) == ("b",) and decoded == 3
    # An invalidation is seen at once, whatever this process decoded before.
    await other.invalidate("t")
    assert await hit(Source(["c"])) == ["c"]  # recomputed

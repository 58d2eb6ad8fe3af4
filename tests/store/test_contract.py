"""The store contract: every primitive behaves the same on the memory twin and on Redis."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.store.key_guard import UndeclaredKey
from upak.store import MemoryData, MemoryStore, Operation, Store, StoreError
from upak.store.operation import NO_ARGS, NoArgs


async def test_claim_once_first_caller_wins(any_store: Store, key_prefix: str) -> None:
    key = key_prefix + "replay:a"
    assert await any_store.claim_once(key, 10_000) is True
    assert await any_store.claim_once(key, 10_000) is False


async def test_claim_once_is_atomic_under_concurrency(any_store: Store, key_prefix: str) -> None:
    key = key_prefix + "replay:race"
    results = await asyncio.gather(*(any_store.claim_once(key, 10_000) for _ in range(200)))
    assert results.count(True) == 1


async def test_claim_expires_after_its_ttl(any_store: Store, key_prefix: str) -> None:
    key = key_prefix + "replay:short"
    clock = [1000.0]
    if isinstance(any_store, MemoryStore):
        any_store.data = MemoryData(clock=lambda: clock[0])
    assert await any_store.claim_once(key, 50)
    if isinstance(any_store, MemoryStore):
        clock[0] += 0.051
    else:
        await asyncio.sleep(0.08)  # Redis expires on its own clock; no way to inject it
    assert await any_store.claim_once(key, 50) is True


async def test_get_set_delete(any_store: Store, key_prefix: str) -> None:
    key = key_prefix + "cache:x"
    assert await any_store.get(key) is None
    await any_store.set(key, "värde", 10_000)
    assert await any_store.get(key) == "värde".encode()
    await any_store.set(key, b"\x00\xff", 10_000)
    assert await any_store.get(key) == b"\x00\xff"
    assert await any_store.delete(key) is True
    assert await any_store.delete(key) is False
    assert await any_store.get(key) is None


async def test_numbers_are_stored_as_redis_stores_them(any_store: Store, key_prefix: str) -> None:
    await any_store.set(key_prefix + "n", 42, 10_000)
    await any_store.set(key_prefix + "f", 1.5, 10_000)
    assert await any_store.get(key_prefix + "n") == b"42"
    assert await any_store.get(key_prefix + "f") == b"1.5"


def _hash_memory(data: MemoryData, keys, args):
    data.hset(keys[0], {"f": "v"})
    return data.get(keys[0])


HASH_THEN_GET = Operation(
    name="test_wrongtype",
    lua="redis.call('HSET', KEYS[1], 'f', 'v') return redis.call('GET', KEYS[1])",
    args=NoArgs,
    memory=_hash_memory,
)


async def test_wrong_type_is_a_store_error_on_both_twins(any_store: Store, key_prefix: str) -> None:
    with pytest.raises(StoreError):
        await any_store.run(HASH_THEN_GET, [key_prefix + "h"], NO_ARGS)


async def test_ping_reports_latency_on_redis_only(any_store: Store) -> None:
    latency = await any_store.ping()
    if isinstance(any_store, MemoryStore):
        assert latency is None
    else:
        assert latency is not None and 0 <= latency < 1


def test_memory_lru_keeps_the_newest_keys() -> None:
    data = MemoryData(max_keys=100)
    for i in range(150):
        data.set(f"k{i}", "v")
    assert len(data) == 100
    assert data.get("k0") is None and data.get("k149") == b"v"


# --- every key a script touches is declared (tests/store/key_guard.py) ---


def _touch_sibling_memory(data: MemoryData, keys, args):
    data.set(keys[0] + ":sibling", "1", px=10_000)
    return b"OK"  # Redis's status reply to SET


# The sibling shares KEYS[1]'s hash tag: on a Cluster it is on the same slot, so only the
# key guard can tell that the script touches a key it was not given.
TOUCHES_A_SIBLING = Operation(
    name="test_touches_a_sibling",
    lua="return redis.call('SET', KEYS[1] .. ':sibling', '1', 'PX', 10000)",
    args=NoArgs,
    memory=_touch_sibling_memory,
)
TOUCHES_ITS_FAMILY = dataclasses.replace(
    TOUCHES_A_SIBLING, name="test_touches_its_family", families=(0,)
)


async def test_a_script_touching_an_undeclared_key_fails(any_store: Store, key_prefix: str) -> None:
    key = key_prefix + "{guard}:a"
    refused = UndeclaredKey if isinstance(any_store, MemoryStore) else StoreError
    with pytest.raises(refused, match="undeclared key"):
        await any_store.run(TOUCHES_A_SIBLING, [key], NO_ARGS)
    assert await any_store.get(key + ":sibling") is None
    # Declared as a family prefix, the same script may touch it.
    assert await any_store.run(TOUCHES_ITS_FAMILY, [key], NO_ARGS) == b"OK"

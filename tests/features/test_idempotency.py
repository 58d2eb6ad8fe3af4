"""Idempotency-Key records on every store twin: one runner per key, replays, mismatches, and
an unfinished record that expires as a lease, not a day."""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.support.redis_servers import RedisServer
from upak.features.idempotency import LEASE_MS, TTL_MS, IdempotencyKeys, KeyState
from upak.store import KeySpace, Store

BODY = {"plan": "start", "return_url": "https://upak.example/paid"}


async def test_one_runner_then_replays_and_mismatches(any_store: Store, key_prefix: str) -> None:
    keys = IdempotencyKeys(any_store, KeySpace(key_prefix))
    assert (await keys.begin("u1", "k", BODY)).state is KeyState.NEW
    assert (await keys.begin("u1", "k", BODY)).state is KeyState.IN_PROGRESS
    await keys.finish("u1", "k", BODY, {"id": "p1"})
    replay = await keys.begin("u1", "k", BODY)
    assert (replay.state, replay.response) == (KeyState.REPLAY, {"id": "p1"})
    assert (await keys.begin("u1", "k", {**BODY, "plan": "pro"})).state is KeyState.MISMATCH
    assert (await keys.begin("u2", "k", BODY)).state is KeyState.NEW  # scopes are apart
    await keys.abandon("u2", "k")
    assert (await keys.begin("u2", "k", BODY)).state is KeyState.NEW


async def test_an_unfinished_record_is_a_lease(
    redis_settings, shared_redis: RedisServer, key_prefix: str
) -> None:
    from upak.store import build_store

    store = build_store(redis_settings)
    await store.start()
    client = aioredis.from_url(shared_redis.url)
    try:
        keys = IdempotencyKeys(store, KeySpace(key_prefix))
        await keys.begin("u1", "k", BODY)
        (name,) = [k async for k in client.scan_iter(f"{key_prefix}idempotency:*")]
        assert 0 < await client.pttl(name) <= LEASE_MS
        await keys.finish("u1", "k", BODY, {"id": "p1"})
        assert LEASE_MS < await client.pttl(name) <= TTL_MS
    finally:
        await client.aclose()
        await store.close()

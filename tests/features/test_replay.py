"""The replay gate's operations: the same behaviour on the memory twin and on Redis."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.redis_servers import RedisServer
from upak.features.replay import (
    CLAIM,
    FINISH,
    RELEASE,
    ClaimState,
    Done,
    Holder,
    Lease,
    ReplayGuard,
    ReplayWindows,
)
from upak.store import (
    ClusterFailoverStore,
    FailoverStore,
    KeySpace,
    MemoryData,
    MemoryStore,
    Mode,
    Store,
)

WINDOWS = ReplayWindows(tolerance=300, horizon=72 * 3600, lease=30)


def guard(store: Store, prefix: str, windows: ReplayWindows = WINDOWS) -> ReplayGuard:
    return ReplayGuard(store, KeySpace(prefix), windows)


async def pttl(store: Store, key: str) -> int:
    if isinstance(store, MemoryStore):
        return store.data.pttl(key)
    assert isinstance(store, FailoverStore | ClusterFailoverStore) and store.redis is not None
    return int(await store.redis.client.pttl(key))


# --- the operations, on both twins ------------------------------------------------------------


async def test_claim_then_duplicates_see_in_progress(any_store: Store, key_prefix: str) -> None:
    key = key_prefix + "replay:x"
    assert await any_store.run(CLAIM, [key], Lease("t1", 30_000)) is ClaimState.CLAIMED
    assert await any_store.run(CLAIM, [key], Lease("t2", 30_000)) is ClaimState.IN_PROGRESS
    assert await any_store.get(key) == b"p:t1"
    assert 0 < await pttl(any_store, key) <= 30_000


async def test_finish_makes_it_done_for_the_longer_lifetime(
    any_store: Store, key_prefix: str
) -> None:
    key = key_prefix + "replay:x"
    await any_store.run(CLAIM, [key], Lease("t1", 30_000))
    assert await any_store.run(FINISH, [key], Done(3_600_000)) is True
    assert await any_store.run(CLAIM, [key], Lease("t2", 30_000)) is ClaimState.DONE
    assert await any_store.get(key) == b"d"
    assert 30_000 < await pttl(any_store, key) <= 3_600_000


async def test_release_frees_only_the_holders_claim(any_store: Store, key_prefix: str) -> None:
    key = key_prefix + "replay:x"
    await any_store.run(CLAIM, [key], Lease("t1", 30_000))
    assert await any_store.run(RELEASE, [key], Holder("someone-else")) is False
    assert await any_store.run(CLAIM, [key], Lease("t2", 30_000)) is ClaimState.IN_PROGRESS
    assert await any_store.run(RELEASE, [key], Holder("t1")) is True
    assert await any_store.run(CLAIM, [key], Lease("t3", 30_000)) is ClaimState.CLAIMED


async def test_release_never_undoes_done(any_store: Store, key_prefix: str) -> None:
    key = key_prefix + "replay:x"
    await any_store.run(CLAIM, [key], Lease("t1", 30_000))
    await any_store.run(FINISH, [key], Done(60_000))
    assert await any_store.run(RELEASE, [key], Holder("t1")) is False
    assert await any_store.run(CLAIM, [key], Lease("t2", 30_000)) is ClaimState.DONE


async def test_one_claim_wins_under_concurrency(any_store: Store, key_prefix: str) -> None:
    key = key_prefix + "replay:race"
    states = await asyncio.gather(
        *(any_store.run(CLAIM, [key], Lease(f"t{n}", 30_000)) for n in range(100))
    )
    assert states.count(ClaimState.CLAIMED) == 1
    assert states.count(ClaimState.IN_PROGRESS) == 99


async def test_a_lapsed_lease_can_be_claimed_again(key_prefix: str) -> None:
    clock = [1_000.0]
    store = MemoryStore()
    store.data = MemoryData(clock=lambda: clock[0])
    key = key_prefix + "replay:x"
    await store.run(CLAIM, [key], Lease("t1", 30_000))
    clock[0] += 30.001
    assert await store.run(CLAIM, [key], Lease("t2", 30_000)) is ClaimState.CLAIMED


# --- the guard ----------------------------------------------------------------------------------


async def test_once_runs_the_handler_once(any_store: Store, key_prefix: str) -> None:
    gate = guard(any_store, key_prefix)
    calls = []

    async def handler() -> str:
        calls.append(1)
        return "effect"

    first = await gate.once("upak", "msg_1", handler)
    again = await gate.once("upak", "msg_1", handler)
    other_scope = await gate.once("yookassa", "msg_1", handler)
    assert (first.state, first.result) == (ClaimState.CLAIMED, "effect")
    assert again.state is ClaimState.DONE and again.result is None
    assert other_scope.state is ClaimState.CLAIMED
    assert len(calls) == 2


async def test_a_duplicate_during_processing_is_in_progress(
    any_store: Store, key_prefix: str
) -> None:
    gate = guard(any_store, key_prefix)
    entered, leave = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        entered.set()
        await leave.wait()
        return "done"

    first = asyncio.create_task(gate.once("upak", "msg_1", slow))
    await entered.wait()
    assert (await gate.once("upak", "msg_1", slow)).state is ClaimState.IN_PROGRESS
    leave.set()
    assert (await first).state is ClaimState.CLAIMED
    assert (await gate.once("upak", "msg_1", slow)).state is ClaimState.DONE


async def test_a_failing_handler_releases_its_claim(any_store: Store, key_prefix: str) -> None:
    gate = guard(any_store, key_prefix)

    async def broken() -> None:
        raise RuntimeError("database down")

    async def works() -> str:
        return "ok"

    with pytest.raises(RuntimeError):
        await gate.once("upak", "msg_1", broken)
    retry = await gate.once("upak", "msg_1", works)
    assert (retry.state, retry.result) == (ClaimState.CLAIMED, "ok")


async def test_done_lives_for_the_idempotency_horizon(any_store: Store, key_prefix: str) -> None:
    gate = guard(any_store, key_prefix)

    async def handler() -> None:
        return None

    await gate.once("upak", "msg_1", handler)
    left = await pttl(any_store, gate.key_for("upak", "msg_1"))
    assert 72 * 3600_000 - 5_000 < left <= 72 * 3600_000


def test_done_outlives_the_replay_window_even_with_a_short_horizon() -> None:
    windows = ReplayWindows(tolerance=3600, horizon=60)
    assert windows.replay_window == 7200
    assert windows.done_ttl == 7200
    assert ReplayWindows(tolerance=300, horizon=72 * 3600).done_ttl == 72 * 3600


def test_keys_are_hashed_ids_under_the_feature() -> None:
    gate = guard(MemoryStore(), "upak:")
    key = gate.key_for("upak", "msg_" + "x" * 10_000 + "\n{tag}")
    assert key.startswith("upak:replay:upak:") and len(key) < 80
    assert "{" not in key
    assert gate.key_for("upak", "a") != gate.key_for("upak", "b")


# --- a Redis outage -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_claims_made_during_an_outage_survive_recovery(
    failover_store: FailoverStore, fresh_redis: RedisServer
) -> None:
    gate = guard(failover_store, "t:")

    async def handler() -> str:
        return "effect"

    fresh_redis.kill()
    assert (await gate.once("upak", "during", handler)).state is ClaimState.CLAIMED
    assert failover_store.mode is Mode.MEMORY
    # Served from memory while Redis is away: still a duplicate on this process.
    assert (await gate.once("upak", "during", handler)).state is ClaimState.DONE
    fresh_redis.restart(keep_data=False)
    for _ in range(200):
        if failover_store.mode is Mode.REDIS:
            break
        await asyncio.sleep(0.05)
    assert failover_store.mode is Mode.REDIS
    # The memory copy is gone at recovery: this answer comes from Redis, written back.
    assert (await gate.once("upak", "during", handler)).state is ClaimState.DONE
    raw = fresh_redis.client()
    assert raw.get(gate.key_for("upak", "during")) == b"d"
    assert raw.pttl(gate.key_for("upak", "during")) > 71 * 3600_000


@pytest.mark.slow
async def test_a_claim_released_during_an_outage_stays_released_after_recovery(
    failover_store: FailoverStore, fresh_redis: RedisServer
) -> None:
    gate = guard(failover_store, "t:")

    async def broken() -> None:
        raise RuntimeError("database down")

    fresh_redis.kill()
    with pytest.raises(RuntimeError):
        await gate.once("upak", "failed", broken)
    fresh_redis.restart(keep_data=False)
    for _ in range(200):
        if failover_store.mode is Mode.REDIS:
            break
        await asyncio.sleep(0.05)
    assert failover_store.mode is Mode.REDIS
    assert failover_store.stats.written_back >= 2  # the claim, then its release, in order
    assert fresh_redis.client().exists(gate.key_for("upak", "failed")) == 0

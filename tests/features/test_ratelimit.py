"""The rate-limit decision: one contract for the Redis script and its memory twin."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer, free_port
from upak.features.ratelimit import (
    DECISIONS_BATCH,
    Decisions,
    RateLimiter,
    ScriptLimit,
    decide_operation,
    identity_token,
    named_limits,
)
from upak.store import KeySpace, MemoryData, MemoryStore, Mode, Store, build_store


async def started_store(redis: RedisServer, key_prefix: str) -> Store:
    """The service's store on `redis`, started (its caller closes it)."""
    store = build_store(make_settings(redis_url=redis.url, redis_key_prefix=key_prefix))
    await store.start()
    return store


@contextlib.asynccontextmanager
async def running_store(redis: RedisServer, key_prefix: str) -> AsyncIterator[Store]:
    store = await started_store(redis, key_prefix)
    try:
        yield store
    finally:
        await store.close()


def evalsha_calls(redis: RedisServer) -> int:
    stats = redis.client().info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def limiter_for(store: Store, key_prefix: str, **kwargs) -> RateLimiter:
    return RateLimiter(store, KeySpace(key_prefix), **kwargs)


def one(text: str, name: str = "t"):
    return named_limits(name, text)


async def test_sliding_log_admits_exactly_n_then_refuses(any_store: Store, key_prefix: str):
    limiter = limiter_for(any_store, key_prefix)
    (limit,) = one("5/minute")
    check = limiter.check_for(limit, identity_token("ip", "10.0.0.1"))
    remaining = []
    for _ in range(5):
        decision = await limiter.decide([check])
        assert decision.allowed
        remaining.append(decision.states[0].remaining)
    assert remaining == [4, 3, 2, 1, 0]
    refused = await limiter.decide([check])
    assert not refused.allowed and not refused.local
    assert 59_000 < refused.states[0].retry_ms <= 60_000
    assert refused.retry_after == 60
    # Known over its limit: answered locally, without the store.
    again = await limiter.decide([check])
    assert not again.allowed and again.local


async def test_another_identity_has_its_own_count(any_store: Store, key_prefix: str):
    limiter = limiter_for(any_store, key_prefix)
    (limit,) = one("1/minute")
    assert (await limiter.decide([limiter.check_for(limit, "ip:a")])).allowed
    assert not (await limiter.decide([limiter.check_for(limit, "ip:a")])).allowed
    assert (await limiter.decide([limiter.check_for(limit, "ip:b")])).allowed


async def test_all_limits_in_one_decision_and_a_refusal_records_nothing(
    any_store: Store, key_prefix: str
):
    limiter = limiter_for(any_store, key_prefix, blocked_max=0)
    wide, narrow = one("5/minute", "wide")[0], one("2/minute", "narrow")[0]
    # One identity: one hash tag, so one script call even on a cluster.
    checks = [limiter.check_for(wide, "ip:a"), limiter.check_for(narrow, "ip:a")]
    assert (await limiter.decide(checks)).allowed
    assert (await limiter.decide(checks)).allowed
    refused = await limiter.decide(checks)
    assert not refused.allowed
    assert [s.retry_ms > 0 for s in refused.states] == [False, True]
    # The wide limit did not count the refused request: 2 used, 3 left before this one.
    alone = await limiter.decide([checks[0]])
    assert alone.allowed and alone.states[0].remaining == 2


async def test_exact_under_concurrency(any_store: Store, key_prefix: str):
    limiter = limiter_for(any_store, key_prefix, blocked_max=0)
    (limit,) = one("20/10s")
    check = limiter.check_for(limit, "ip:crowd")
    decisions = await asyncio.gather(*(limiter.decide([check]) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 20


async def test_gcra_allows_a_burst_then_one_per_interval(any_store: Store, key_prefix: str):
    limiter = limiter_for(any_store, key_prefix)
    (limit,) = one("10/minute:gcra")
    check = limiter.check_for(limit, "ip:g")
    remaining = [(await limiter.decide([check])).states[0].remaining for _ in range(10)]
    assert remaining == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    refused = await limiter.decide([check])
    assert not refused.allowed
    # The next one is due one emission interval (6 s) after the burst, not a whole window.
    assert 5_000 < refused.states[0].retry_ms <= 6_000


async def test_keys_expire_with_their_window(any_store: Store, key_prefix: str):
    limiter = limiter_for(any_store, key_prefix)
    log, gcra = one("3/30s", "log")[0], one("3/30s:gcra", "gcra")[0]
    checks = [limiter.check_for(log, "ip:ttl"), limiter.check_for(gcra, "ip:ttl")]
    await limiter.decide(checks)
    for check in checks:
        ttl = await any_store.run(PTTL, [check.key], NO_ARGS)
        assert 0 < ttl <= 30_000


def _pttl_memory(data: MemoryData, keys, args):
    return data.pttl(keys[0])


from upak.store.operation import NO_ARGS, NoArgs, Operation  # noqa: E402

PTTL = Operation(
    name="test_pttl", lua="return redis.call('PTTL', KEYS[1])", args=NoArgs, memory=_pttl_memory
)


@pytest.mark.parametrize("policy", ["2/1s", "2/1s:gcra"])
async def test_the_window_slides(any_store: Store, key_prefix: str, policy: str):
    clock = [1000.0]
    if isinstance(any_store, MemoryStore):
        any_store.data = MemoryData(clock=lambda: clock[0])
    limiter = limiter_for(any_store, key_prefix, blocked_max=0)
    (limit,) = one(policy)
    check = limiter.check_for(limit, "ip:slide")
    assert (await limiter.decide([check])).allowed
    assert (await limiter.decide([check])).allowed
    assert not (await limiter.decide([check])).allowed
    if isinstance(any_store, MemoryStore):
        clock[0] += 1.001
    else:
        await asyncio.sleep(1.05)  # Redis counts on its own clock: no way to inject it
    assert (await limiter.decide([check])).allowed


async def test_sliding_log_counts_any_interval_not_fixed_buckets():
    clock = [1000.0]
    store = MemoryStore(clock=lambda: clock[0])
    limiter = limiter_for(store, "t:", blocked_max=0)
    (limit,) = one("4/10s")
    check = limiter.check_for(limit, "ip:edge")
    for _ in range(4):
        assert (await limiter.decide([check])).allowed
        clock[0] += 2.0  # admissions at 0, 2, 4, 6 s
    # At 8 s and 9.9 s the window still holds all four; at 10.0 s the first has left.
    assert not (await limiter.decide([check])).allowed
    clock[0] = 1009.9
    refused = await limiter.decide([check])
    assert not refused.allowed and refused.states[0].retry_ms == 100
    clock[0] = 1010.0
    decision = await limiter.decide([check])
    assert decision.allowed and decision.states[0].remaining == 0


async def test_local_block_lasts_until_the_retry_time():
    clock = [1000.0]
    store = MemoryStore(clock=lambda: clock[0])
    limiter = limiter_for(store, "t:", clock=lambda: clock[0])
    (limit,) = one("1/10s")
    check = limiter.check_for(limit, "ip:blocked")
    assert (await limiter.decide([check])).allowed
    assert not (await limiter.decide([check])).local
    clock[0] += 9.0
    local = await limiter.decide([check])
    assert local.local and local.states[0].retry_ms == 1000
    clock[0] += 1.0
    assert (await limiter.decide([check])).allowed
    assert limiter.local_refusals == 1


async def test_the_local_table_is_bounded():
    limiter = limiter_for(MemoryStore(), "t:", blocked_max=3)
    (limit,) = one("1/minute")
    for n in range(10):
        check = limiter.check_for(limit, f"ip:{n}")
        await limiter.decide([check])
        await limiter.decide([check])
    assert len(limiter._blocked) == 3


def test_fallback_divides_each_amount():
    op = decide_operation(4)
    assert op.fallback_args is not None
    # Two decisions in one call: (one limit), (two limits).
    args = op.record_of([1, "l", 120, 60_000, 2, "g", 3, 1000, "l", 9, 1000])
    divided = op.fallback_args(args)
    assert op.argv(divided) == [1, "l", 30, 60_000, 2, "g", 1, 1000, "l", 2, 1000]
    assert divided.decisions[1][0] == ScriptLimit("g", 1, 1000)  # never below one
    assert decide_operation(1).fallback_args is None


def test_the_decision_record_is_its_argv_both_ways():
    op = decide_operation()
    record = Decisions(((ScriptLimit("l", 5, 1000),), (ScriptLimit("G", 2, 60_000),) * 2))
    argv = op.argv(record)
    assert argv == [1, "l", 5, 1000, 2, "G", 2, 60_000, "G", 2, 60_000]
    assert op.record_of(argv) == record
    with pytest.raises(ValueError):
        op.record_of([2, "l", 5, 1000])  # says two limits, holds one


async def test_outage_counts_in_memory_with_the_divisor(key_prefix: str):
    # Nothing listens on this port: the failover serves every call from process memory.
    store = build_store(
        make_settings(
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            redis_socket_timeout=0.2,
            redis_connect_timeout=0.2,
        )
    )
    await store.start()
    try:
        limiter = limiter_for(store, key_prefix, divisor=2, blocked_max=0)
        (limit,) = one("10/minute")
        check = limiter.check_for(limit, "ip:down")
        decisions = [await limiter.decide([check]) for _ in range(8)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    finally:
        await store.close()


async def test_keys_never_hold_an_email_and_share_a_tag_per_identity(shared_redis: RedisServer):
    limiter = limiter_for(MemoryStore(), "upak:")
    (limit,) = one("5/minute", "login")
    who = identity_token("email", "Alice{x}@Example.com")
    key = limiter.check_for(limit, who).key
    assert "alice" not in key.lower() and key.count("{") == 1 and key.count("}") == 1
    assert limiter.check_for(limit, "ip:1.2.3.4").key.startswith("upak:ratelimit:{ip:1.2.3.4}:")


async def test_checks_of_several_identities_decide_together(any_store: Store, key_prefix: str):
    # On Cluster the two identities' keys are in two slots: the store splits the call.
    limiter = limiter_for(any_store, key_prefix, blocked_max=0)
    a, b = one("2/minute", "a")[0], one("1/minute", "b")[0]
    checks = [limiter.check_for(a, "ip:1"), limiter.check_for(b, "email:z")]
    first = await limiter.decide(checks)
    assert first.allowed and [s.remaining for s in first.states] == [1, 0]
    second = await limiter.decide(checks)
    assert not second.allowed and second.states[1].retry_ms > 0


async def test_concurrent_decisions_share_one_script_call(shared_redis: RedisServer, key_prefix):
    async with running_store(shared_redis, key_prefix) as store:
        limiter = limiter_for(store, key_prefix)
        (limit,) = one("2/minute")

        await limiter.decide([limiter.check_for(limit, "ip:warm")])  # loads the script
        before = evalsha_calls(shared_redis)
        # 30 identities, three requests each, all in one loop step.
        decisions = await asyncio.gather(
            *(limiter.decide([limiter.check_for(limit, f"ip:{n % 30}")]) for n in range(90))
        )
        assert evalsha_calls(shared_redis) - before == 1
        assert sum(d.allowed for d in decisions) == 60
        # In order within the batch: each identity's first two are admitted, the third not.
        assert [d.allowed for d in decisions[60:]] == [False] * 30


async def test_a_merged_call_holds_at_most_max_calls_decisions(
    shared_redis: RedisServer, key_prefix
):
    async with running_store(shared_redis, key_prefix) as store:
        limiter = limiter_for(store, key_prefix, blocked_max=0)
        (limit,) = one("1000/minute")

        await limiter.decide([limiter.check_for(limit, "ip:warm")])
        before = evalsha_calls(shared_redis)
        cap = DECISIONS_BATCH.max_calls
        decisions = await asyncio.gather(
            *(limiter.decide([limiter.check_for(limit, "ip:many")]) for _ in range(cap + 1))
        )
        assert (
            evalsha_calls(shared_redis) - before == 2
        )  # cap decisions in one call, the last in another
        assert [d.states[0].remaining for d in decisions] == list(range(999, 998 - cap, -1))


async def _waiting_in_the_batch(shared_redis: RedisServer, key_prefix: str):
    """A store and limiter, warmed (connection open, script loaded), and three decisions on
    one 2/minute key, asked for in one loop step and still waiting in its batch."""
    store = await started_store(shared_redis, key_prefix)
    limiter = limiter_for(store, key_prefix, blocked_max=0)
    (limit,) = one("2/minute")
    check = limiter.check_for(limit, "ip:cancel")
    await limiter.decide([limiter.check_for(limit, "ip:warm")])
    wire = store.redis._wire
    tasks = [asyncio.create_task(limiter.decide([check])) for _ in range(3)]
    writes = wire.writes
    await asyncio.sleep(0)  # the three are waiting; this step's batch has not left yet
    assert wire.writes == writes and not any(t.done() for t in tasks)
    return store, limiter, check, wire, tasks


async def test_a_caller_that_gives_up_before_its_batch_leaves_is_not_sent(
    shared_redis: RedisServer, key_prefix: str
):
    store, limiter, check, _, tasks = await _waiting_in_the_batch(shared_redis, key_prefix)
    try:
        tasks[1].cancel()
        async with asyncio.timeout(5):  # a waiter left hanging fails, rather than hangs
            first, third = await tasks[0], await tasks[2]
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        # The cancelled decision was never made: the other two are the key's two admissions.
        assert first.allowed and third.allowed
        assert [first.states[0].remaining, third.states[0].remaining] == [1, 0]
        assert not (await limiter.decide([check])).allowed
    finally:
        await store.close()


async def test_a_caller_that_gives_up_after_its_batch_left_keeps_its_decision(
    shared_redis: RedisServer, key_prefix: str
):
    store, limiter, check, wire, tasks = await _waiting_in_the_batch(shared_redis, key_prefix)
    try:
        writes = wire.writes
        while wire.writes == writes:
            await asyncio.sleep(0)
        assert not any(t.done() for t in tasks)  # written, no reply read yet
        tasks[1].cancel()
        async with asyncio.timeout(5):  # a waiter left hanging fails, rather than hangs
            first, third = await tasks[0], await tasks[2]
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        # Redis made the cancelled caller's decision (admitted, the second); the others get
        # their own, once each: the first admitted, the third refused.
        assert first.allowed and first.states[0].remaining == 1
        assert not third.allowed
        assert not (await limiter.decide([check])).allowed
    finally:
        await store.close()


async def test_a_merged_call_that_fails_on_redis_falls_back_as_one_call(
    fresh_redis: RedisServer, key_prefix: str
):
    async with running_store(fresh_redis, key_prefix) as store:
        limiter = limiter_for(store, key_prefix, blocked_max=0)
        (limit,) = one("5/minute")
        check = limiter.check_for(limit, "ip:outage")
        await limiter.decide([limiter.check_for(limit, "ip:warm")])
        fresh_redis.kill()
        async with asyncio.timeout(5):
            decisions = await asyncio.gather(*(limiter.decide([check]) for _ in range(8)))
        # The merged call fell back as one call would: every decision answered, in order.
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
        # Merged, they tripped the breaker and were served from memory as one call.
        assert store.mode is Mode.MEMORY and store.stats.fallback_calls == 1


async def test_a_waiting_decision_is_the_batch_future_itself(
    shared_redis: RedisServer, key_prefix: str
):
    # No coroutine of its own per decision: the store hands back the batch's future.
    async with running_store(shared_redis, key_prefix) as store:
        limiter = limiter_for(store, key_prefix, blocked_max=0)
        (limit,) = one("2/minute")
        check = limiter.check_for(limit, "ip:future")
        waiting = store.submit(limiter.op, [check.key], check.limit.alone)
        assert isinstance(waiting, asyncio.Future)
        assert (await waiting)[0] == 1


@pytest.mark.parametrize("callers", [1, 3])
async def test_a_decision_after_the_script_cache_emptied_is_made_once(
    fresh_redis: RedisServer, key_prefix: str, callers: int
):
    async with running_store(fresh_redis, key_prefix) as store:
        limiter = limiter_for(store, key_prefix, blocked_max=0)
        (limit,) = one("3/minute")
        check = limiter.check_for(limit, "ip:flushed")
        await limiter.decide([limiter.check_for(limit, "ip:warm")])  # connection open
        fresh_redis.client().script_flush()
        async with asyncio.timeout(5):
            decisions = await asyncio.gather(*(limiter.decide([check]) for _ in range(callers)))
        # NOSCRIPT: the script never ran, so sent again (EVAL) each decision counts once.
        assert [d.states[0].remaining for d in decisions] == list(range(2, 2 - callers, -1))
        assert store.mode is Mode.REDIS


async def test_a_decision_alone_that_fails_on_redis_falls_back(
    fresh_redis: RedisServer, key_prefix: str
):
    async with running_store(fresh_redis, key_prefix) as store:
        limiter = limiter_for(store, key_prefix, blocked_max=0)
        (limit,) = one("1/minute")
        check = limiter.check_for(limit, "ip:alone")
        await limiter.decide([limiter.check_for(limit, "ip:warm")])
        fresh_redis.kill()
        async with asyncio.timeout(5):
            first = await limiter.decide([check])
            second = await limiter.decide([check])
        assert first.allowed and not second.allowed
        assert store.mode is Mode.MEMORY and store.stats.fallback_calls == 2

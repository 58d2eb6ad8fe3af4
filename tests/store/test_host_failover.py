"""Two workers of one host (two FailoverStores on one host tier) across a real Redis outage:
what one worker did is what the other serves, before, during and after it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.features.test_ratelimit import limiter_for, one
from tests.features.test_sessions import cookie
from tests.features.test_sessions_failover import Worker, clock, workers  # noqa: F401 (fixtures)
from tests.store.test_failover import wait_for_mode
from tests.store.test_host import lock_holder
from tests.support.redis_servers import RedisServer
from upak.store import FailoverStore, Mode
from upak.store.host import HostStore


@pytest.fixture
def host(workers: Callable[..., Worker], tmp_path: Path) -> Callable[..., Worker]:  # noqa: F811
    """A worker on the host tier at `path` (one path, one host)."""

    def start(path: Path = tmp_path / "host-a") -> Worker:
        worker = workers(upak_fallback_path=str(path))
        assert isinstance(worker[0].memory, HostStore)
        return worker

    return start


async def outage(*stores: FailoverStore) -> None:
    for store in stores:
        await store.ping()
        assert store.mode is Mode.MEMORY


async def test_the_workers_of_a_host_serve_one_another_s_sessions_in_an_outage(
    host, fresh_redis: RedisServer
) -> None:
    (store_a, a), (store_b, b) = host(), host()
    await store_a.start()
    await store_b.start()
    before = await a.create(1)
    doomed = await a.create(1)
    assert await a.resolve(cookie(before)) is not None  # used once before, on worker a only
    assert await a.resolve(cookie(doomed)) is not None
    fresh_redis.kill()
    await outage(store_a, store_b)
    assert await b.resolve(cookie(before)) is not None  # b never saw it: the host tier did
    during = await b.create(2)  # a login during the outage, on b
    assert await a.resolve(cookie(during)) is not None
    assert await b.revoke(1, doomed.session.handle)  # a logout on b ends it on a
    assert await a.resolve(cookie(doomed)) is None
    fresh_redis.start()  # an empty Redis: everything it knows comes from the write-back
    await wait_for_mode(store_a, Mode.REDIS, within=3.0)
    await wait_for_mode(store_b, Mode.REDIS, within=3.0)
    assert await b.resolve(cookie(during)) is not None  # the outage login works after it
    assert await a.resolve(cookie(doomed)) is None  # and the logout holds
    assert await b.resolve(cookie(doomed)) is None


async def test_a_revocation_while_redis_is_up_reaches_every_worker_s_outage_copy(
    host, fresh_redis: RedisServer
) -> None:
    (store_a, a), (store_b, b) = host(), host()
    issued = await a.create(3)
    assert await a.resolve(cookie(issued)) is not None
    assert await b.resolve(cookie(issued)) is not None
    assert await b.revoke_others(3, keep_handle="none") == 1  # e.g. a password change
    fresh_redis.kill()
    await outage(store_a, store_b)
    assert await a.resolve(cookie(issued)) is None
    assert await b.resolve(cookie(issued)) is None


async def test_two_hosts_keep_two_tiers(host, fresh_redis: RedisServer, tmp_path: Path) -> None:
    (store_a, a), (store_b, b) = host(), host(tmp_path / "host-b")
    issued = await b.create(4)  # a login that host a has never used
    fresh_redis.kill()
    await outage(store_a, store_b)
    assert await a.resolve(cookie(issued)) is None  # another host: another tier


async def test_a_rate_limit_is_exact_across_the_host_s_workers_in_an_outage(
    host, fresh_redis: RedisServer
) -> None:
    (store_a, _), (store_b, _) = host(), host()
    fresh_redis.kill()
    await outage(store_a, store_b)
    limiters = [limiter_for(store, "upak:", blocked_max=0) for store in (store_a, store_b)]
    (limit,) = one("20/minute")
    admitted = 0
    for i in range(60):  # one client, alternating between the two workers
        limiter = limiters[i % 2]
        admitted += (await limiter.decide([limiter.check_for(limit, "ip:one")])).allowed
    assert admitted == 20


@pytest.mark.parametrize("shared", [True, False], ids=["host tier", "process memory"])
async def test_while_redis_is_up_the_mirror_is_written_once_and_revocations_every_time(
    host,
    workers,  # noqa: F811
    shared: bool,
) -> None:
    store_a, a = host() if shared else workers()
    tier = store_a.memory
    assert isinstance(tier, HostStore) is shared
    issued = await a.create(5)
    for _ in range(10):
        assert await a.resolve(cookie(issued)) is not None
    # The first resolve's copy went to the tier; the same answer again within the interval
    # is not rewritten (the clock stands still here, so Redis answers the same each time).
    assert tier.skipped_remembers >= 9
    session_key = a._session_key(5, issued.session.handle)
    assert tier.data.exists(session_key)
    assert await a.revoke(5, issued.session.handle)
    assert not tier.data.exists(session_key)  # applied to the tier at once


async def test_a_worker_whose_sibling_tripped_follows_it_onto_the_tier(
    host, fresh_redis: RedisServer
) -> None:
    (store_a, a), (store_b, b) = host(), host()
    await store_a.start()
    await store_b.start()
    # Worker a alone loses Redis (its connection, say); Redis answers b as ever. Without the
    # host's breaker, b would serve from Redis what a serves from the tier.
    store_a._trip(ConnectionError("simulated: this worker lost Redis"))
    during = await b.create(6)  # no await between: a's watcher has not run yet
    assert store_b.mode is Mode.MEMORY and store_b.stats.followed_host == 1
    assert store_b.stats.condition == "unreachable"
    assert fresh_redis.client().keys("upak:sessions:*:s:*") == []  # in the tier, journaled
    assert await a.resolve(cookie(during)) is not None  # and a serves it from there
    await wait_for_mode(store_a, Mode.REDIS, within=3.0)
    await wait_for_mode(store_b, Mode.REDIS, within=3.0)
    assert len(fresh_redis.client().keys("upak:sessions:*:s:*")) == 1  # written back
    assert store_a.stats.written_back + store_b.stats.written_back == 1  # once, not per worker


async def test_the_calls_of_a_worker_that_died_mid_outage_are_written_back_by_another(
    host, fresh_redis: RedisServer
) -> None:
    (store_a, a), (store_b, b) = host(), host()
    await store_a.start()
    await store_b.start()
    before = await b.create(8)
    assert await b.resolve(cookie(before)) is not None
    fresh_redis.kill()
    await outage(store_a, store_b)
    on_a = await a.create(8)  # a login and a logout on worker a, which then dies
    assert await a.revoke(8, before.session.handle)
    on_b = await b.create(9)
    await store_a.close()  # a's memory is gone; its calls are in the tier's journal
    assert store_b.stats.pending_writeback == 3
    fresh_redis.start()  # empty: what it learns comes from b's write-back alone
    await wait_for_mode(store_b, Mode.REDIS, within=3.0)
    assert store_b.stats.written_back == 3 and store_b.stats.pending_writeback == 0
    assert await b.resolve(cookie(on_a)) is not None
    assert await b.resolve(cookie(on_b)) is not None
    assert await b.resolve(cookie(before)) is None


CLAIMS = 400
# The writer: a worker of the host, started on a Redis that answers every call 10 ms late,
# writing back in batches of 5, so the write-back takes long enough to be killed mid-way.
SLOW_WRITER = """
import asyncio, sys
from tests.store.test_failover import quick_failover_settings
from upak.store import build_store

async def main(url, path):
    store = build_store(quick_failover_settings(url, upak_fallback_path=path))
    store.writeback_batch = 5
    fast = store.redis.run_raw
    async def slow(op, keys, args):
        await asyncio.sleep(0.01)
        return await fast(op, keys, args)
    store.redis.run_raw = slow
    await store.start()  # the host is degraded and the journal full: it writes back
    print("started", flush=True)
    await asyncio.sleep(60)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_writer_killed_mid_write_back_is_taken_over_and_nothing_is_lost(
    host, fresh_redis: RedisServer, tmp_path: Path
) -> None:
    store, _ = host()  # never started: its watcher stays out of the way until the kill
    store._trip(ConnectionError("simulated: an outage"))
    for i in range(CLAIMS):
        assert await store.claim_once(f"upak:replay:w:{i}", 600_000)
    assert store.stats.pending_writeback == CLAIMS
    raw = fresh_redis.client()
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, fresh_redis.url, str(tmp_path / "host-a")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 20
        while len(raw.keys("upak:replay:w:*")) < 50:
            assert time.monotonic() < deadline, "the writer never started writing back"
            await asyncio.sleep(0.005)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(5)
    finally:
        writer.kill()
    landed = len(raw.keys("upak:replay:w:*"))
    assert 50 <= landed < CLAIMS  # killed mid-way
    assert 0 < store.stats.pending_writeback <= CLAIMS - landed + 5  # its last batch, at most
    await store.start()  # its flock is free: this worker takes over where it stopped
    await wait_for_mode(store, Mode.REDIS, within=10.0)
    assert len(raw.keys("upak:replay:w:*")) == CLAIMS and store.stats.pending_writeback == 0
    assert await store.claim_once("upak:replay:w:0", 600_000) is False  # still a replay


async def test_a_revocation_the_busy_tier_could_not_take_is_owed_and_applied_next(
    host, fresh_redis: RedisServer
) -> None:
    (store_a, a), (store_b, b) = host(), host()
    tier = store_a.memory
    assert isinstance(tier, HostStore)
    doomed, kept = await a.create(11), await a.create(12)
    assert await a.resolve(cookie(doomed)) is not None  # mirrored in the tier
    tier.tier.lock_timeout = 0.05
    for _holder in lock_holder(tier.tier.path.with_suffix(".lock")):  # a stuck worker
        assert await a.revoke(11, doomed.session.handle)  # Redis took it; the tier could not
        assert tier.data.exists(a._session_key(11, doomed.session.handle))
    assert await a.resolve(cookie(kept)) is not None  # a's next tier write pays the debt
    assert not tier.data.exists(a._session_key(11, doomed.session.handle))
    fresh_redis.kill()
    await outage(store_a, store_b)
    assert await b.resolve(cookie(doomed)) is None  # no worker serves it in the outage
    assert await b.resolve(cookie(kept)) is not None

"""The write-back journal's cap: touches go first, a revocation never (issue 13, finding 13)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import make_settings
from tests.features.test_sessions import Clock, cookie
from tests.store.test_failover import wait_for_mode
from tests.support.redis_servers import RedisServer
from upak.features import sessions as feature
from upak.features.sessions import SessionManager, Touch
from upak.store import FailoverStore, KeySpace, Mode, build_store


@pytest.fixture
async def small_journal(fresh_redis: RedisServer) -> AsyncIterator[FailoverStore]:
    store = build_store(
        make_settings(
            redis_url=fresh_redis.url, redis_socket_timeout=0.2, redis_connect_timeout=0.2
        ),
        clock=Clock(),
    )
    store.memory.journal.max_entries = 10
    store.backoff_min = 0.5  # time to fill the journal before the probe finds Redis up
    await store.start()
    yield store
    await store.close()


async def test_a_full_journal_never_drops_a_revocation(
    small_journal: FailoverStore, fresh_redis: RedisServer
) -> None:
    store = small_journal
    manager = SessionManager(store, KeySpace("upak:"), idle_timeout=3600, max_age=86_400)
    issued = await manager.create(21)
    store._trip(ConnectionError("simulated: this worker lost Redis"))
    assert await manager.revoke(21, issued.session.handle)  # the journal's oldest entry
    for i in range(40):  # four times the cap of calls that come after it
        assert await store.claim_once(f"replay:after:{i}", 60_000)
    assert store.stats.pending_writeback <= 11
    assert store.stats.writeback_dropped >= 30
    await wait_for_mode(store, Mode.REDIS, within=3.0)
    assert fresh_redis.client().keys("upak:sessions:*:s:*") == []  # the logout reached Redis
    assert await manager.resolve(cookie(issued)) is None
    assert await store.claim_once("replay:after:39", 60_000) is False  # the newest were kept


async def test_touches_go_before_anything_else(small_journal: FailoverStore) -> None:
    store = small_journal
    store._trip(ConnectionError("simulated"))
    for i in range(5):
        assert await store.claim_once(f"replay:first:{i}", 60_000)
    for _ in range(5):
        await store.run(feature.TOUCH, ["upak:sessions:{u1}:s:x"], Touch(0, 1000, 0))
    assert await store.claim_once("replay:overflow", 60_000)
    kept = [entry.op.name for entry in store.memory.journal.entries(store.partition)]
    # Room for a tenth of the cap was made, from the touches: every claim, older or not, stays.
    assert kept.count("claim_once") == 6 and kept.count("sessions.touch") == 4


async def test_a_journal_of_revocations_only_grows_past_its_cap(
    small_journal: FailoverStore,
) -> None:
    store = small_journal
    manager = SessionManager(store, KeySpace("upak:"), idle_timeout=3600, max_age=86_400)
    store._trip(ConnectionError("simulated"))
    for i in range(25):
        await manager.revoke(30 + i, "0" * 31 + "1")
    assert store.stats.pending_writeback == 25 and store.stats.writeback_dropped == 0

"""The sessions contract: every operation behaves the same on the memory twin and on Redis.

Time is the manager's injected clock (passed to every script), so expiry is tested by moving
it, never by sleeping.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from upak.features.sessions import (
    CREATE,
    TOUCH,
    NewSession,
    SessionManager,
    Touch,
    handle_of,
    parse_cookie,
)
from upak.store import ClusterFailoverStore, FailoverStore, KeySpace, MemoryData, MemoryStore, Store


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(any_store: Store, key_prefix: str, clock: Clock) -> SessionManager:
    if isinstance(any_store, MemoryStore):
        any_store.data = MemoryData(clock=clock)
    return SessionManager(
        any_store, KeySpace(key_prefix), idle_timeout=60, max_age=300, clock=clock, max_per_user=5
    )


async def stored_items(store: Store, prefix: str) -> dict[str, object]:
    """Every key of this test and its value, from wherever the store keeps them."""
    if isinstance(store, MemoryStore):
        return {k: store.data.entry(k) for k in store.data.keys() if k.startswith(prefix)}  # noqa: SIM118
    assert isinstance(store, FailoverStore | ClusterFailoverStore) and store.redis is not None
    client = store.redis.client
    found: dict[str, object] = {}
    async for key in client.scan_iter(match=prefix + "*"):
        name = key.decode()
        kind = (await client.type(name)).decode()
        if kind == "hash":
            found[name] = await client.hgetall(name)
        elif kind == "zset":
            found[name] = await client.zrange(name, 0, -1, withscores=True)
        else:
            found[name] = await client.get(name)
    return found


def cookie(issued):
    parsed = parse_cookie(issued.cookie_value)
    assert parsed is not None
    return parsed


async def test_a_created_session_resolves(manager: SessionManager) -> None:
    issued = await manager.create(42, ip="10.0.0.1", user_agent="pytest")
    session = await manager.resolve(cookie(issued))
    assert session is not None
    assert session.user_id == 42 and session.handle == issued.session.handle
    assert (session.ip, session.user_agent) == ("10.0.0.1", "pytest")
    assert session.expires_at == pytest.approx(session.created_at + 300)


async def test_ids_are_256_bit_and_fresh(manager: SessionManager) -> None:
    first, second = await manager.create(1), await manager.create(1)
    token = cookie(first).token
    assert len(token) == 43  # base64url of 32 bytes
    assert first.cookie_value != second.cookie_value
    assert first.session.handle != second.session.handle


async def test_ids_the_server_did_not_issue_are_not_adopted(manager: SessionManager) -> None:
    issued = await manager.create(7)
    made_up = parse_cookie(f"7.{secrets.token_urlsafe(32)}")
    other_user = parse_cookie(f"8.{cookie(issued).token}")
    assert made_up is not None and other_user is not None
    assert await manager.resolve(made_up) is None
    assert await manager.resolve(other_user) is None  # a token only works for its own user


@pytest.mark.parametrize(
    "value",
    ["", "7", "7.", ".abc", "0." + "a" * 43, "7." + "a" * 42, "7." + "a" * 44, "7.a+b", "x" * 5000],
)
def test_malformed_cookies_do_not_parse(value: str) -> None:
    assert parse_cookie(value) is None


async def test_idle_timeout_renewed_by_use(manager: SessionManager, clock: Clock) -> None:
    issued = await manager.create(5)
    clock.advance(50)
    assert await manager.resolve(cookie(issued)) is not None  # renewed at t=50
    clock.advance(50)
    session = await manager.resolve(cookie(issued))  # t=100: idle for 50 s only
    assert session is not None and session.last_seen_at == pytest.approx(clock.now)
    clock.advance(60)
    assert await manager.resolve(cookie(issued)) is None  # idle for 60 s: ended
    clock.advance(-30)
    assert await manager.resolve(cookie(issued)) is None  # and it stays ended


async def test_absolute_timeout_even_when_used(manager: SessionManager, clock: Clock) -> None:
    issued = await manager.create(5)
    for _ in range(5):
        clock.advance(59)
        assert await manager.resolve(cookie(issued)) is not None
    clock.advance(6)  # 301 s after login, last use 6 s ago
    assert await manager.resolve(cookie(issued)) is None
    assert await manager.list(5) == []


async def test_revoke_one_session(manager: SessionManager) -> None:
    mine, other = await manager.create(1), await manager.create(1)
    assert await manager.revoke(1, mine.session.handle) is True
    assert await manager.revoke(1, mine.session.handle) is False
    assert await manager.resolve(cookie(mine)) is None
    assert await manager.resolve(cookie(other)) is not None


async def test_a_handle_only_works_for_its_own_user(manager: SessionManager) -> None:
    theirs = await manager.create(2)
    assert await manager.revoke(1, theirs.session.handle) is False
    assert await manager.revoke(1, "not-a-handle") is False
    assert await manager.resolve(cookie(theirs)) is not None


async def test_revoke_others_keeps_the_current_one(manager: SessionManager) -> None:
    current, *others = [await manager.create(3) for _ in range(4)]
    untouched = await manager.create(4)
    assert await manager.revoke_others(3, current.session.handle) == 3
    assert await manager.resolve(cookie(current)) is not None
    for each in others:
        assert await manager.resolve(cookie(each)) is None
    assert await manager.resolve(cookie(untouched)) is not None
    assert [s.handle for s in await manager.list(3)] == [current.session.handle]


async def test_list_shows_live_sessions_most_recent_first(
    manager: SessionManager, clock: Clock
) -> None:
    first = await manager.create(9, ip="1.1.1.1", user_agent="a")
    clock.advance(10)
    second = await manager.create(9, ip="2.2.2.2", user_agent="b")
    clock.advance(10)
    await manager.resolve(cookie(first))
    listed = await manager.list(9)
    assert [s.handle for s in listed] == [first.session.handle, second.session.handle]
    assert listed[1].ip == "2.2.2.2" and listed[1].user_agent == "b"
    clock.advance(55)  # the second one has now been idle for 65 s
    assert [s.handle for s in await manager.list(9)] == [first.session.handle]


async def test_a_user_has_at_most_max_per_user_sessions(
    manager: SessionManager, clock: Clock
) -> None:
    issued = []
    for _ in range(7):
        issued.append(await manager.create(11))
        clock.advance(1)
    assert await manager.resolve(cookie(issued[0])) is None
    assert await manager.resolve(cookie(issued[1])) is None
    assert all([await manager.resolve(cookie(each)) for each in issued[2:]])
    assert len(await manager.list(11)) == 5


async def test_touch_never_brings_a_revoked_session_back(
    manager: SessionManager, any_store: Store, clock: Clock, key_prefix: str
) -> None:
    issued = await manager.create(12)
    await manager.revoke(12, issued.session.handle)
    key = manager._session_key(12, issued.session.handle)
    now = int(clock() * 1000)
    assert await any_store.run(TOUCH, [key], Touch(now, 60_000, now)) is False
    assert await stored_items(any_store, key) == {}


async def test_revocation_racing_requests_stays_revoked(
    manager: SessionManager, any_store: Store, clock: Clock, key_prefix: str
) -> None:
    issued = await manager.create(13)
    clock.advance(30)  # every resolve below also renews (writes)

    async def use() -> None:
        await manager.resolve(cookie(issued))

    tasks = [use() for _ in range(25)]
    tasks.insert(12, manager.revoke(13, issued.session.handle))
    await asyncio.gather(*tasks)
    assert await manager.resolve(cookie(issued)) is None
    assert not [k for k in await stored_items(any_store, key_prefix) if ":s:" in k]


async def test_a_create_replayed_after_log_out_everywhere_is_refused(
    manager: SessionManager, any_store: Store, clock: Clock
) -> None:
    current = await manager.create(14)
    created_ms = int(clock() * 1000)
    clock.advance(10)
    await manager.revoke_others(14, current.session.handle)
    handle = handle_of(secrets.token_urlsafe(32))
    keys = [
        manager._session_key(14, handle),
        manager._index_key(14),
        manager._floor_key(14),
        manager._tomb_key(14, handle),
        manager._sessions_family(14),
    ]
    now = int(clock() * 1000)
    late = NewSession(handle, created_ms, created_ms + 300_000, 60_000, now, "", "", 5)
    assert await any_store.run(CREATE, keys, late) is False
    fresh = NewSession(handle, now, now + 300_000, 60_000, now, "", "", 5)
    assert await any_store.run(CREATE, keys, fresh) is True


async def test_a_create_replayed_after_its_logout_is_refused(
    manager: SessionManager, any_store: Store, clock: Clock, key_prefix: str
) -> None:
    """A login written back by one worker after another wrote back its logout (the logout's
    worker never saw the session): the tombstone wins over the order of replay."""
    handle = handle_of(secrets.token_urlsafe(32))
    assert await manager.revoke(16, handle) is False  # nothing to end here, yet a tombstone
    keys = [
        manager._session_key(16, handle),
        manager._index_key(16),
        manager._floor_key(16),
        manager._tomb_key(16, handle),
        manager._sessions_family(16),
    ]
    now = int(clock() * 1000)
    created = NewSession(handle, now - 5_000, now - 5_000 + 300_000, 60_000, now, "", "", 5)
    assert await any_store.run(CREATE, keys, created) is False
    assert not [k for k in await stored_items(any_store, key_prefix) if ":s:" in k]


async def test_a_tombstone_lives_as_long_as_its_session_could(
    manager: SessionManager, any_store: Store, clock: Clock, key_prefix: str
) -> None:
    issued = await manager.create(17)
    clock.advance(30)
    assert await manager.revoke(17, issued.session.handle)
    tomb = manager._tomb_key(17, issued.session.handle)
    if isinstance(any_store, MemoryStore):
        ttl = any_store.data.pttl(tomb)
    else:
        assert (
            isinstance(any_store, FailoverStore | ClusterFailoverStore)
            and any_store.redis is not None
        )
        ttl = await any_store.redis.client.pttl(tomb)
    # To the session's absolute end (max age after login, 30 s ago), not a fresh max age.
    assert manager.max_age_ms - 31_000 <= ttl <= manager.max_age_ms - 29_000


async def test_the_store_never_holds_the_token(
    manager: SessionManager, any_store: Store, key_prefix: str
) -> None:
    issued = await manager.create(15, ip="10.1.1.1", user_agent="ua")
    token = cookie(issued).token
    items = await stored_items(any_store, key_prefix)
    assert items, "the session should be stored"
    dump = repr(items)
    assert token not in dump and token.encode() not in repr(items).encode()
    assert issued.session.handle in dump  # keys name the hash of the token instead
    assert token not in repr(issued) and token not in repr(cookie(issued))

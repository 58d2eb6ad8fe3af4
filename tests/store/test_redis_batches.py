"""RedisStore's multiplexed connection: replies never go to the wrong caller.

Every call shares one connection and replies are matched to calls by order. A call cut short
by its deadline leaves its reply on the way; the connection must be dropped, not reused, or
the next call would read the old reply.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer
from tests.support.scripts import BUSY_LUA
from upak.store.memory import MemoryData
from upak.store.operation import NO_ARGS, NoArgs, Operation, StoreError
from upak.store.redis import UNAVAILABLE, RedisStore


def _unused(data: MemoryData, keys, args):  # the memory twin is not exercised here
    raise AssertionError("memory twin called")


@dataclass(frozen=True)
class Busy:
    ms: int


@dataclass(frozen=True)
class Text:
    text: str


SLOW = Operation(name="test_slow", lua=BUSY_LUA, args=Busy, memory=_unused)
ECHO = Operation(name="test_echo", lua="return ARGV[1]", args=Text, memory=_unused)
BROKEN = Operation(
    name="test_broken", lua="return redis.call('NOSUCHCOMMAND')", args=NoArgs, memory=_unused
)


@pytest.fixture
async def store(shared_redis: RedisServer) -> RedisStore:
    settings = make_settings(redis_url=shared_redis.url, redis_socket_timeout=0.1)
    store = RedisStore.from_settings(settings)
    yield store
    await store.close()


async def test_a_batch_cut_by_its_deadline_leaves_no_reply_behind(store: RedisStore) -> None:
    assert await store.run(ECHO, ["k"], Text("warm")) == b"warm"  # scripts loaded, one connection
    with pytest.raises(UNAVAILABLE):
        await store.run(SLOW, ["k"], Busy(300))
    await asyncio.sleep(0.4)  # the slow reply has arrived by now, on the dropped connection
    assert await store.run(ECHO, ["k"], Text("mine")) == b"mine"


async def test_each_call_of_a_batch_gets_its_own_reply_or_error(store: RedisStore) -> None:
    results = await asyncio.gather(
        store.run(ECHO, ["a"], Text("one")),
        store.run(BROKEN, ["b"], NO_ARGS),
        store.run(ECHO, ["c"], Text("three")),
        return_exceptions=True,
    )
    assert results[0] == b"one"
    assert isinstance(results[1], StoreError)
    assert results[2] == b"three"
    assert store._wire is not None
    # One write for the three calls, one for their EVAL retries (the scripts were not loaded),
    # one for the connection's set-up.
    assert store._wire.writes <= 3

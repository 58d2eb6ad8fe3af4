"""The multiplexed connection, on both event loops the service runs on (asyncio and uvloop).

Every call of a process shares this one connection and replies are matched to calls by
order, so each test here is about a way that matching could go wrong: concurrency, a caller
that gives up, a hung server, a dropped connection, a peer that does not speak RESP.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import hiredis
import pytest
import redis.exceptions as rex
import uvloop

from tests.support.redis_servers import RedisServer
from tests.support.scripts import BUSY_LUA
from upak.connect import WireTarget
from upak.store.wire import open_wire

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    return asyncio.run if request.param == "asyncio" else uvloop.run


def target_of(server: RedisServer, **overrides: Any) -> WireTarget:
    return WireTarget(host="127.0.0.1", port=server.port, **overrides)


def test_concurrent_calls_each_get_their_own_reply(run: Runner, shared_redis: RedisServer):
    async def scenario() -> None:
        wire = await open_wire(target_of(shared_redis))
        try:
            # Mixed sizes, one of 1 MB: replies arrive split across many reads.
            values = [f"value-{i}-".encode() * (i % 40 + 1) for i in range(3000)]
            values[1500] = b"x" * 1_000_000
            set_up = wire.writes
            futures = [asyncio.get_running_loop().create_future() for _ in values]
            wire.send([hiredis.pack_command(("ECHO", v)) for v in values], futures)
            # A call in the middle of them, written on its own, gets its own reply.
            alone = wire.call(("ECHO", "alone"))
            assert await asyncio.gather(*futures) == values
            assert await alone == b"alone"
            assert wire.writes == set_up + 2  # the 3000 calls in one write, then the one
        finally:
            wire.close()

    run(scenario())


def test_a_caller_that_gives_up_leaves_its_reply_behind(run: Runner, shared_redis: RedisServer):
    async def scenario() -> None:
        wire = await open_wire(target_of(shared_redis))
        try:
            abandoned = wire.call(("EVAL", BUSY_LUA, 0, 50))
            mine = wire.call(("ECHO", "mine"))
            abandoned.cancel()
            assert await mine == b"mine"
            assert await wire.call(("ECHO", "next")) == b"next"
        finally:
            wire.close()

    run(scenario())


def test_a_hung_server_fails_every_waiter_at_the_deadline(run: Runner, fresh_redis: RedisServer):
    async def scenario() -> None:
        wire = await open_wire(target_of(fresh_redis, socket_timeout=0.2))
        assert await wire.call(("PING",)) == b"PONG"
        fresh_redis.pause()
        try:
            calls = [wire.call(("PING",)) for _ in range(20)]
            # Far above the deadline: the test fails by timing out here, never by hanging.
            results = await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True), timeout=5
            )
        finally:
            fresh_redis.resume()
        assert all(isinstance(r, rex.TimeoutError) for r in results), results
        assert not wire.open
        with pytest.raises(rex.TimeoutError):
            wire.call(("PING",))

    run(scenario())


def test_a_connection_closed_by_redis_fails_its_waiters(run: Runner, shared_redis: RedisServer):
    name = f"victim-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        wire = await open_wire(target_of(shared_redis, client_name=name, socket_timeout=5))
        blocked = wire.call(("BLPOP", f"nothing-{name}", 4))
        await asyncio.sleep(0.05)  # the BLPOP is on the server
        admin = shared_redis.client()
        (victim,) = [c for c in admin.client_list() if c["name"] == name]
        admin.client_kill_filter(_id=victim["id"])
        with pytest.raises(rex.ConnectionError, match="closed the connection"):
            await asyncio.wait_for(blocked, timeout=3)
        assert not wire.open

    run(scenario())


def test_error_replies_keep_their_meaning(run: Runner, shared_redis: RedisServer):
    async def scenario() -> None:
        wire = await open_wire(target_of(shared_redis))
        try:
            with pytest.raises(rex.NoScriptError):
                await wire.call(("EVALSHA", "0" * 40, 0))
            with pytest.raises(rex.ResponseError, match="unknown command") as caught:
                await wire.call(("NOSUCHCOMMAND",))
            assert type(caught.value) is rex.ResponseError
            # An error answers only its own call: the connection goes on.
            assert await wire.call(("ECHO", "still here")) == b"still here"
        finally:
            wire.close()

    run(scenario())


def test_a_peer_that_does_not_speak_resp_is_a_connection_error(run: Runner):
    async def scenario() -> None:
        async def http_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            await reader.read(100)
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()

        server = await asyncio.start_server(http_server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(rex.ConnectionError, match="not RESP"):
                await open_wire(WireTarget(host="127.0.0.1", port=port))
        finally:
            server.close()

    run(scenario())


def test_nothing_listening_is_a_connection_error_naming_the_cause(run: Runner):
    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(rex.ConnectionError, match="could not connect"):
            await open_wire(WireTarget(host="127.0.0.1", port=port))

    run(scenario())


def test_the_password_is_not_in_the_targets_repr() -> None:
    assert "s3cret-pw" not in repr(WireTarget(password="s3cret-pw"))

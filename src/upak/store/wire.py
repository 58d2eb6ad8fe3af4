"""One multiplexed connection to Redis: every call of a process on one socket, in order.

Redis answers a connection's commands in the order it received them, so one connection can
carry any number of concurrent calls (the design of Lettuce and StackExchange.Redis): the
store's batcher (`upak.store.batch`) hands a loop step's packed commands and their futures to
`send`, which writes them with one `write`, and `data_received` hands the replies, parsed by
hiredis, to the futures in the same order. The hot path holds no pool, lock, task or
per-reply timer. redis-py 8's pooled asyncio connections spend about 311k instructions per
round trip (bench/client_cost.py: callgrind, one caller, sequential GETs after a warm-up, the
client's cost only; the blocking client: 139k; this connection: 62k): a pool lock, a health
check, observability hooks, a timeout per reply. That is most of a bare FastAPI request
(~410k, bench/request_path.py), and was most of what the rate limiter cost a route.

Failing fast: the oldest unanswered call has a deadline (the socket timeout); once it passes,
the connection is aborted and every waiting call fails with TimeoutError, so a hung server
holds nobody longer than that. A closed connection fails its waiters with ConnectionError.
Either way the connection is finished, and the store opens a new one for the next call.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import Any

import hiredis
import redis.exceptions as rex

from upak.connect import WireTarget
from upak.store.batch import fresh_error

__all__ = ["Wire", "error_from_reply", "fresh_error", "open_wire"]

Command = tuple[str | bytes | int | float, ...]

# The error replies the store tells apart (an outage, a lost script cache, a demoted master);
# anything else stays a ResponseError, the answer to that one call.
_ERRORS: dict[str, type[rex.RedisError]] = {
    "NOSCRIPT": rex.NoScriptError,
    "READONLY": rex.ReadOnlyError,
    "LOADING": rex.BusyLoadingError,
    "MASTERDOWN": rex.MasterDownError,
    "TRYAGAIN": rex.TryAgainError,
    "WRONGPASS": rex.AuthenticationError,
    "NOAUTH": rex.AuthenticationError,
    "NOPERM": rex.NoPermissionError,
    "OOM": rex.OutOfMemoryError,
}


def error_from_reply(reply: hiredis.ReplyError) -> rex.RedisError:
    message = str(reply)
    return _ERRORS.get(message.split(" ", 1)[0], rex.ResponseError)(message)


class Wire(asyncio.Protocol):
    """The protocol side of one connection. Open it with `open_wire`."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.error: BaseException | None = None  # why the connection ended; None while open
        self.writes = 0
        self.address: tuple[str, int] | None = None  # the server's (host, port); None on unix
        self._retiring = False

    @property
    def open(self) -> bool:
        return self.error is None and self._transport is not None

    def call(self, command: Command) -> asyncio.Future[Any]:
        """Write `command` now; the future gets its reply or error. For the connection's own
        commands (PING, WAIT, ROLE, set-up): operation calls go through the store's batcher,
        which writes a whole loop step's calls with one `send`."""
        future = self._loop.create_future()
        # hiredis's stub types the command as a 1-tuple; it takes any number of arguments.
        self.send([hiredis.pack_command(command)], [future])  # type: ignore[arg-type]
        return future

    def send(self, packed: list[bytes], futures: list[asyncio.Future[Any]]) -> None:
        """Write packed commands with one `write`; `futures[i]` gets the reply of
        `packed[i]` (or its error, or the connection's)."""
        if self.error is not None:
            raise fresh_error(self.error)
        transport = self._transport
        if transport is None:
            raise rex.ConnectionError("the connection to Redis is not open")
        due = self._loop.time() + self.timeout
        waiting = self._waiting
        for future in futures:
            waiting.append((future, due))
        transport.write(packed[0] if len(packed) == 1 else b"".join(packed))
        self.writes += 1
        if self._deadline is None:
            self._deadline = self._loop.call_at(waiting[0][1], self._check_deadline)

    def close(self) -> None:
        self._fail(rex.ConnectionError("the connection to Redis was closed by the store"))

    def retire(self) -> None:
        """Take no new calls, and close once the calls in flight have their replies (or
        their deadline passes). For leaving a server that still answers, such as a master
        Sentinel no longer names: closing at once would fail calls it may have run."""
        self._retiring = True
        if not self._waiting:
            self.close()

    def _check_deadline(self) -> None:
        # One timer for the oldest call only: replies move the front of the queue, and the
        # timer, when it fires, re-arms for whoever is oldest then.
        self._deadline = None
        if not self._waiting or self.error is not None:
            return
        due = self._waiting[0][1]
        if self._loop.time() >= due:
            self._fail(rex.TimeoutError(f"Redis did not answer within {self.timeout} s"))
        else:
            self._deadline = self._loop.call_at(due, self._check_deadline)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        waiting, self._waiting = self._waiting, deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(fresh_error(self.error))

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := reader.gets()) is not False:
                future = waiting.popleft()[0]
                if future.done():  # its caller gave up; the reply is still this call's
                    continue
                if type(reply) is hiredis.ReplyError:
                    future.set_exception(error_from_reply(reply))
                else:
                    future.set_result(reply)
            if self._retiring and not waiting:
                self.close()
        except hiredis.ProtocolError as exc:
            self._fail(rex.ConnectionError(f"Redis sent a reply that is not RESP: {exc}"))
        except IndexError:
            self._fail(rex.ConnectionError("Redis sent a reply no call was waiting for"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(rex.ConnectionError(f"Redis closed the connection{reason}"))


async def open_wire(target: WireTarget) -> Wire:
    """Connect, authenticate, select the database and name the client, or raise an outage
    error (ConnectionError, TimeoutError, AuthenticationError) saying why."""
    loop = asyncio.get_running_loop()

    def protocol() -> Wire:
        return Wire(target.socket_timeout)

    try:
        async with asyncio.timeout(target.connect_timeout):
            if target.path is not None:
                _, wire = await loop.create_unix_connection(protocol, target.path, ssl=target.tls)
            else:
                host, port = await target.locate() if target.locate else (target.host, target.port)
                _, wire = await loop.create_connection(
                    protocol,
                    host,
                    port,
                    ssl=target.tls,
                    server_hostname=host if target.tls else None,
                )
                wire.address = (host, port)
    except TimeoutError as exc:
        raise rex.TimeoutError(
            f"could not connect to Redis within {target.connect_timeout} s"
        ) from exc
    except (OSError, ssl.SSLError) as exc:
        raise rex.ConnectionError(f"could not connect to Redis: {exc}") from exc
    _keep_alive(wire._transport)
    hello: list[Command] = []
    if target.password:
        hello.append(
            ("AUTH", target.username, target.password)
            if target.username
            else ("AUTH", target.password)
        )
    if target.db:
        hello.append(("SELECT", target.db))
    if target.client_name:
        hello.append(("CLIENT", "SETNAME", target.client_name))
    try:
        # One write for the whole set-up.
        replies: list[asyncio.Future[Any]] = [wire._loop.create_future() for _ in hello]
        if hello:
            wire.send([hiredis.pack_command(c) for c in hello], replies)  # type: ignore[arg-type]
        for reply in replies:
            await reply
    except rex.ConnectionError:
        wire.close()
        raise
    except rex.ResponseError as exc:
        wire.close()
        if "AUTH" in str(exc) or "password" in str(exc):
            raise rex.AuthenticationError(f"Redis refused the credentials: {exc}") from None
        raise rex.ConnectionError(f"Redis refused the connection's set-up: {exc}") from None
    except BaseException:
        wire.close()
        raise
    return wire


def _keep_alive(transport: asyncio.Transport | None) -> None:
    # The seed's `tcp-keepalive 300` on the server side; the client side keeps NATs and
    # firewalls from dropping an idle connection silently.
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

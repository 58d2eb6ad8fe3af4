"""RedisStore: operations as Lua scripts, one round trip each, pipelined together.

Standalone, unix-socket, TLS and Sentinel Redis: every call goes over one multiplexed
connection (`upak.store.wire`), so calls made in the same event-loop step leave in one write
and their replies come back in one read (auto-pipelining, as ioredis and Lettuce do). Redis
Cluster routes each call by its keys' slot: calls of one loop step go as one redis-py
cluster pipeline. Either way scripts are run by SHA and sent again whenever Redis answers
NOSCRIPT (a restart or SCRIPT FLUSH empties its script cache).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import hiredis
import redis.exceptions as rex
from redis.asyncio.cluster import PipelineCommand

from upak.config import Settings
from upak.connect import WireTarget, async_client, wire_target
from upak.store.base import Store
from upak.store.batch import StepBatch, fail, settle
from upak.store.conditions import condition_of
from upak.store.operation import Arg, Mode, Operation, StoreError
from upak.store.wire import Wire, fresh_error, open_wire

A = TypeVar("A")
T = TypeVar("T")

# Exception classes that always mean "Redis is not serving us right now". Error replies that
# do (OOM, BUSY, MISCONF, …) are told apart by `upak.store.conditions.condition_of`, which
# is what decides; a script whose keys span slots is a bug in one operation, not an outage.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    rex.ConnectionError,  # also AuthenticationError, BusyLoadingError, MaxConnectionsError
    rex.TimeoutError,
    TimeoutError,
    OSError,
    rex.ReadOnlyError,
    rex.ClusterError,  # ClusterDownError, MasterDownError
    rex.SlotNotCoveredError,
    rex.TryAgainError,
)


def script_sha(lua: str) -> str:
    return hashlib.sha1(lua.encode(), usedforsecurity=False).hexdigest()


class RedisStore(Store):
    """Operations on Redis: over one multiplexed connection, or through a RedisCluster client.

    `client` is the redis-py client of the same settings (`upak.connect.async_client`): the
    Cluster path runs on it; otherwise it is kept for its connection settings and Sentinel's
    master discovery, and `target` says where the multiplexed connection goes.
    """

    def __init__(
        self,
        client: Any,
        *,
        target: WireTarget | None = None,
        call_timeout: float = 1.0,
        cluster: bool = False,
        wait_replicas: int = 0,
        wait_timeout: float = 0.1,
    ) -> None:
        if not cluster and target is None:
            raise ValueError("a RedisStore outside Cluster needs the connection's target")
        self.client = client
        self.cluster = cluster
        self.target = target
        # A hard ceiling on ping and on a Cluster batch, on top of the socket timeouts: a
        # server that accepts but never answers cannot hold a call.
        self.call_timeout = call_timeout
        self._wire: Wire | None = None
        self._opening: asyncio.Future[Wire] | None = None
        # The request path's one batcher: a loop step's calls leave in one write (one
        # pipeline per node on Cluster); the FailoverStores over this store merge an
        # operation's calls in the same step first (`StepBatch.defer`).
        self.batch: StepBatch[_Call] = StepBatch(self._send_step)
        self._tasks: set[asyncio.Task[None]] = set()
        self._shas: dict[int, str] = {}
        self.calls_sent = 0  # operation calls written to Redis: lets tests see the breaker open
        # Durable calls wait for this many replicas (WAIT); the timeout stays well inside the
        # socket timeout, since WAIT holds the connection every other call shares.
        self.wait_replicas = wait_replicas
        self.wait_ms = max(
            1, int(1000 * min(wait_timeout, (target.socket_timeout if target else 1.0) / 2))
        )
        # After a WAIT that no failover explains (a replica down or lagging), durable writes
        # skip WAIT for this long: otherwise each would hold the shared connection.
        self.wait_pause = 1.0
        self._wait_paused_until = 0.0
        self._node_wait_paused: dict[str, float] = {}  # Cluster: the same, per node
        # How long a durable write may wait, during a failover, for Sentinel to name the
        # new master so the write can be repeated there.
        self.failover_wait = 2.0
        self.wait_timeouts = 0  # WAITs that came back short of replicas
        self.writes_repeated = 0  # durable writes repeated on a master found after such a WAIT
        self.unconfirmed_writes = 0  # durable writes answered without a replica's ack
        self.master_announcements = 0  # +switch-master messages that moved the connection

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStore:
        """The store for `settings.redis`: any topology, the service's timeouts."""
        client = async_client(settings)
        return cls(
            client,
            target=wire_target(settings, client),
            call_timeout=settings.redis_socket_timeout + settings.redis_connect_timeout,
            cluster=settings.redis.kind == "cluster",
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout=settings.redis_wait_timeout,
        )

    @property
    def mode(self) -> Mode:
        return Mode.REDIS

    def _script(self, op: Operation[Any, Any]) -> str:
        # The one place the script's text is read: the contract suite puts its key guard
        # in front of every script here (tests/store/key_guard.py).
        return op.lua

    def _sha(self, op: Operation[Any, Any]) -> str:
        sha = self._shas.get(id(op))
        if sha is None:
            sha = self._shas[id(op)] = script_sha(self._script(op))
        return sha

    async def run(self, op: Operation[A, T], keys: Sequence[str], args: A) -> T:
        return op.parse(await self.run_raw(op, keys, args))

    async def run_raw(self, op: Operation[A, Any], keys: Sequence[str], record: A) -> Any:
        """The operation's raw reply. Outage errors pass through (the failover's business);
        anything else Redis refused is a StoreError."""
        if self.cluster:
            return await self._queued(op, keys, record)
        wire = self._wire
        if wire is None or wire.error is not None:
            wire = await self._connected()
        self.calls_sent += 1
        try:
            if op.durable and self.wait_replicas and time.monotonic() >= self._wait_paused_until:
                return await self._durable(wire, op, keys, record)
            return await self._evalsha(wire, op, keys, record)
        except BaseException as exc:
            raise self._failed(exc) from None

    def submit_raw(
        self, op: Operation[Any, Any], keys: Sequence[str], record: Any
    ) -> asyncio.Future[Any] | None:
        """`run_raw`'s common case with no coroutine: the call joins this loop step's write
        and the future has its raw reply, or the error as Redis gave it (`failed` makes it
        what `run_raw` raises; a NoScriptError means the script did not run). None when the
        call needs `run_raw` (no open connection, a durable write, Cluster)."""
        if self.cluster:
            return None
        wire = self._wire
        if wire is None or wire.error is not None:
            return None
        if op.durable and self.wait_replicas:
            return None
        self.calls_sent += 1
        future = wire._loop.create_future()
        self.batch.add((wire, op, keys, record, future, False, None))
        return future

    def failed(self, exc: BaseException) -> BaseException:
        """What `run_raw` raises for `exc`, an error a `submit_raw` future got."""
        return self._failed(exc)

    async def _evalsha(
        self, wire: Wire, op: Operation[Any, Any], keys: Sequence[str], record: Any
    ) -> Any:
        future = wire._loop.create_future()
        self.batch.add((wire, op, keys, record, future, False, None))
        try:
            return await future
        except rex.NoScriptError:
            # The script cache was emptied: EVAL runs the script and caches it again.
            wire = await self._connected()
            future = wire._loop.create_future()
            self.batch.add((wire, op, keys, record, future, True, None))
            return await future

    # --- the batcher's send: one loop step's calls ---

    def _send_step(self, calls: list[_Call]) -> None:
        if self.cluster:
            self._send_cluster(calls)
            return
        wire = calls[0][0]
        for call in calls:
            if call[0] is not wire:
                break
        else:
            self._write(wire, calls)
            return
        by_wire: dict[int, list[_Call]] = {}  # a reconnection inside the step
        for call in calls:
            by_wire.setdefault(id(call[0]), []).append(call)
        for group in by_wire.values():
            self._write(group[0][0], group)

    def _write(self, wire: Any, calls: list[_Call]) -> None:
        """One write: every call not given up on, then one WAIT behind them for the durable
        ones (WAIT counts the replicas that have this connection's writes, so it follows
        them on the same one)."""
        packed: list[bytes] = []
        futures: list[asyncio.Future[Any]] = []
        waits: list[asyncio.Future[int]] = []
        for _, op, keys, record, future, script, waited in calls:
            if op is None:  # a WAIT only
                assert waited is not None
                waits.append(waited)
                continue
            assert future is not None
            if future.done():
                continue  # its caller gave up before the call left: it is not sent
            if waited is not None:
                waits.append(waited)
            try:
                packed.append(self._packed(op, keys, op.argv(record), script))
            except Exception as exc:
                future.set_exception(exc)
                continue
            futures.append(future)
        if waits:
            waited_all: asyncio.Future[Any] = wire._loop.create_future()
            waited_all.add_done_callback(_share_wait(waits))
            wait = ("WAIT", self.wait_replicas, self.wait_ms)
            packed.append(hiredis.pack_command(wait))  # type: ignore[arg-type]
            futures.append(waited_all)
        if not packed:
            return
        try:
            wire.send(packed, futures)
        except BaseException as exc:  # the connection ended before this step's write
            fail(futures, exc)

    def _packed(
        self, op: Operation[Any, Any], keys: Sequence[str], args: Sequence[Arg], script: bool
    ) -> bytes:
        if script:
            command: tuple[Any, ...] = ("EVAL", self._script(op), len(keys), *keys, *args)
        else:
            command = ("EVALSHA", self._sha(op), len(keys), *keys, *args)
        return hiredis.pack_command(command)  # type: ignore[arg-type]

    async def _written_and_waited(
        self, wire: Wire, op: Operation[Any, Any], keys: Sequence[str], record: Any
    ) -> tuple[Any, int, Wire]:
        """The call and the loop step's WAIT behind it, in one write on one connection (one
        WAIT for every durable call of the step: one per call would hold the shared
        connection a timeout each while replicas do not answer)."""
        script = False
        for _ in range(2):
            written = wire._loop.create_future()
            waited: asyncio.Future[int] = wire._loop.create_future()
            waited.add_done_callback(_retrieved)
            self.batch.add((wire, op, keys, record, written, script, waited))
            try:
                reply = await written
            except rex.NoScriptError:
                wire = await self._connected()
                script = True
                continue
            return reply, await waited, wire
        raise StoreError(f"Redis lost the script of {op.name} twice in a row")

    def _waited_again(self, wire: Wire) -> asyncio.Future[int]:
        """A WAIT on `wire`, shared with every other asked for in this loop step."""
        waited: asyncio.Future[int] = wire._loop.create_future()
        self.batch.add((wire, None, (), None, None, False, waited))
        return waited

    async def _durable(
        self, wire: Wire, op: Operation[Any, Any], keys: Sequence[str], record: Any
    ) -> Any:
        """A write that must survive a failover, answered once replicas have it. When they
        do not confirm in time the master may have changed under us: ask Sentinel again and,
        if it names another server, repeat the (idempotent) write there before answering."""
        assert self.target is not None
        give_up = time.monotonic() + self.failover_wait
        reply, acked, wire = await self._written_and_waited(wire, op, keys, record)
        while acked < self.wait_replicas:
            self.wait_timeouts += 1
            locate, failing_over = self.target.locate, self.target.failing_over
            if locate is None or failing_over is None:
                self._wait_paused_until = time.monotonic() + self.wait_pause
                self.unconfirmed_writes += 1
                return reply  # no Sentinel to ask: the replicas are slow, the write stands
            async with asyncio.timeout(self.call_timeout):
                # In this order: a failover that ends between the two questions shows as a
                # move, never as "no failover" on the old master.
                in_failover = await failing_over()
                master = tuple(await locate())
                moved = wire.address != master or wire.error is not None
                if not moved and (not in_failover or time.monotonic() > give_up):
                    if not await self._replicas_attached(wire):
                        # A replica down, no failover: WAIT would only hold the connection.
                        self._wait_paused_until = time.monotonic() + self.wait_pause
                    self.unconfirmed_writes += 1
                    return reply  # the write stands
            if moved:
                self._leave_wire(wire)
                self.writes_repeated += 1
                return await self._evalsha(await self._connected(), op, keys, record)
            # A failover is under way and Sentinel has not named the new master yet.
            acked = await self._waited_again(wire)
        return reply

    async def _replicas_attached(self, wire: Wire) -> bool:
        """Whether the master has the replicas WAIT asks for attached (merely lagging).

        ROLE is an @admin command, which the least-privilege app user of `upak redis config`
        may not run: refused, the answer is "not attached", so WAIT pauses (a WAIT that times
        out would hold the shared connection) and the write stands, counted unconfirmed."""
        try:
            role = await wire.call(("ROLE",))
        except rex.ResponseError:  # NOPERM
            return False
        return len(role) > 2 and len(role[2]) >= self.wait_replicas

    def _failed(self, exc: BaseException) -> BaseException:
        if isinstance(exc, rex.ReadOnlyError):
            # A demoted master (Sentinel failover): reconnecting asks where the master is now.
            self._drop_wire()
        return _as_store_error(exc)

    async def _connected(self) -> Wire:
        """The open connection, opening it first if needed (one opening for all callers)."""
        wire = self._wire
        if wire is not None and wire.error is None:
            return wire
        if self._opening is None:
            assert self.target is not None
            self._opening = asyncio.ensure_future(open_wire(self.target))
            self._opening.add_done_callback(self._opened)
        # Shielded: a caller that gives up must not cancel the opening the others wait for.
        return await asyncio.shield(self._opening)

    def _opened(self, opening: asyncio.Future[Wire]) -> None:
        self._opening = None
        if opening.cancelled() or opening.exception() is not None:
            return  # the waiters got the exception; retrieving it here keeps asyncio quiet
        self._drop_wire()
        self._wire = opening.result()

    def _drop_wire(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None

    def _leave_wire(self, wire: Wire) -> None:
        """Move new calls to a new connection; `wire` finishes the calls it carries."""
        if self._wire is wire:
            self._wire = None
        wire.retire()

    # --- Redis Cluster: the calls of one loop step, one pipeline per node, side by side ---

    async def _queued(self, op: Operation[Any, Any], keys: Sequence[str], record: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.batch.add((None, op, keys, record, future, False, None))
        return await future

    def _send_cluster(self, calls: list[_Call]) -> None:
        """The step's calls not given up on, sent by one task (one pipeline per node)."""
        batch: list[tuple[Operation[Any, Any], Sequence[str], Sequence[Arg], Any]] = []
        for _, op, keys, record, future, _, _ in calls:
            assert op is not None and future is not None
            if future.done():
                continue  # its caller gave up before the call left: it is not sent
            try:
                batch.append((op, keys, op.argv(record), future))
            except Exception as exc:
                future.set_exception(exc)
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def slot_of(self, key: str) -> int | None:
        """`key`'s Cluster slot, None outside Cluster: calls merged into one must share it."""
        return int(self.client.keyslot(key)) if self.cluster else None

    async def _send(
        self, batch: list[tuple[Operation[Any, Any], Sequence[str], Sequence[Arg], Any]]
    ) -> None:
        futures = [future for *_, future in batch]
        try:
            await self._evalsha_all([(op, keys, args) for op, keys, args, _ in batch], futures)
        except BaseException as exc:  # every waiter must hear what happened to its call
            fail(futures, _as_store_error(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _evalsha_all(
        self,
        calls: list[tuple[Operation[Any, Any], Sequence[str], Sequence[Arg]]],
        futures: list[asyncio.Future[Any]],
    ) -> None:
        """Each call's reply or its own error to its future: the calls are grouped by the
        master of their slot and each group goes as one pipeline to its node, all groups at
        once, each group's futures settled as soon as its node answered. A node that is
        down, hung or refusing fails (and delays) its own group only (a per-node breaker
        keeps the other nodes' keys on Redis), and is left to redis-py's topology refresh."""
        await self._refresh_slot_map()
        self.calls_sent += len(calls)
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i, (_, keys, _) in enumerate(calls):
            node = self.cluster_node(self.client.keyslot(keys[0]))
            groups.setdefault(node.name, (node, []))[1].append(i)
        await asyncio.gather(
            *(
                self._node_pipeline(node, calls, indexes, futures)
                for node, indexes in groups.values()
            )
        )

    async def _refresh_slot_map(self) -> None:
        """The slot map asked again after a node failed. A refresh that fails (the node
        asked is down or slow) leaves the map held so far routing calls and heartbeats, so
        only a dead node's own calls and pings fail, not every range's; the next step asks
        again."""
        if not self.client._initialize:
            return
        try:
            async with asyncio.timeout(self.call_timeout):
                await self.client.initialize()
        except Exception:
            if not self.client.nodes_manager.slots_cache:
                raise  # no map to fall back on (never read)

    def cluster_node(self, slot: int) -> Any:
        """The redis-py ClusterNode serving `slot` now (the master of its slot range)."""
        return self.client.nodes_manager.get_node_from_slot(slot)

    async def _node_pipeline(
        self,
        node: Any,
        calls: list[tuple[Operation[Any, Any], Sequence[str], Sequence[Arg]]],
        indexes: list[int],
        futures: list[asyncio.Future[Any]],
    ) -> None:
        """One node's calls as one pipeline; their replies (or errors) settle their futures
        as soon as this node answered, whatever the other nodes do."""
        replies: dict[int, Any] = {}
        await self._node_replies(node, calls, indexes, replies)  # cancelled: see `_send`
        for i in indexes:
            reply = replies[i]
            if isinstance(reply, BaseException):
                reply = _as_store_error(reply)
            settle(futures[i], reply)

    async def _node_replies(
        self,
        node: Any,
        calls: list[tuple[Operation[Any, Any], Sequence[str], Sequence[Arg]]],
        indexes: list[int],
        replies: dict[int, Any],
    ) -> None:
        todo = indexes
        try:
            async with asyncio.timeout(self.call_timeout):
                for _ in range(2):
                    commands = [
                        PipelineCommand(
                            i,
                            "EVALSHA",
                            self._sha(calls[i][0]),
                            len(calls[i][1]),
                            *calls[i][1],
                            *calls[i][2],
                        )
                        for i in todo
                    ]
                    durable = sum(calls[i][0].durable for i in todo)
                    if durable and self._waits_on(node):
                        # Behind the writes on the same connection: WAIT counts the
                        # replicas that have this connection's writes.
                        commands.append(
                            PipelineCommand(-1, "WAIT", self.wait_replicas, self.wait_ms)
                        )
                    await node.execute_pipeline(commands)
                    for command in commands:
                        if command.position < 0:
                            self._waited(node, command.result, durable)
                        else:
                            replies[command.position] = command.result
                    missing = [
                        c.position for c in commands if isinstance(c.result, rex.NoScriptError)
                    ]
                    if not missing:
                        break
                    # The node's script cache was emptied (restart, promotion, SCRIPT FLUSH).
                    for op in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                        await node.execute_command("SCRIPT", "LOAD", self._script(op))
                    todo = missing
                for i in indexes:
                    if isinstance(replies[i], rex.MovedError | rex.AskError | rex.TryAgainError):
                        # The slot moved (resharding, a promotion seen by this node first):
                        # redis-py follows the redirection and updates its slot map.
                        op, keys, args = calls[i]
                        try:
                            replies[i] = await self.client.execute_command(
                                "EVALSHA", self._sha(op), len(keys), *keys, *args
                            )
                        except rex.NoScriptError:
                            replies[i] = await self.client.execute_command(
                                "EVAL", self._script(op), len(keys), *keys, *args
                            )
                        except Exception as exc:
                            replies[i] = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if condition_of(exc) is not None:
                self._node_failed(node)
            for i in indexes:
                replies[i] = fresh_error(exc)

    def _waits_on(self, node: Any) -> bool:
        return bool(self.wait_replicas) and time.monotonic() >= self._node_wait_paused.get(
            node.name, 0.0
        )

    def _waited(self, node: Any, acked: Any, durable: int) -> None:
        """A node's WAIT came back: short of replicas (down or lagging, or WAIT refused),
        its durable writes stand unconfirmed and that node skips WAIT for `wait_pause`
        (a WAIT that times out holds the node's connection). No repeat on a new master
        as under Sentinel: redis-py's slot map finds the promoted replica for later calls."""
        if isinstance(acked, int) and acked >= self.wait_replicas:
            return
        self.wait_timeouts += 1
        self.unconfirmed_writes += durable
        self._node_wait_paused[node.name] = time.monotonic() + self.wait_pause

    def _node_failed(self, node: Any) -> None:
        """A node stopped answering: its connections reconnect, the slot map is asked again
        (a replica may have been promoted) before the next calls, the node asked last."""
        node.update_active_connections_for_reconnect()
        self.client.nodes_manager.move_node_to_end_of_cached_nodes(node.name)
        self.client._initialize = True

    async def ping_slot(self, slot: int) -> float:
        """Round-trip seconds of a PING to the master serving `slot` (a per-node heartbeat)."""
        started = time.perf_counter()
        await self._refresh_slot_map()
        async with asyncio.timeout(self.call_timeout):
            node = self.cluster_node(slot)
            try:
                await node.execute_command("PING")
            except Exception as exc:
                if condition_of(exc) is not None:
                    self._node_failed(node)
                raise
        return time.perf_counter() - started

    async def reset_slot(self, slot: int) -> None:
        """After a node's outage: its connections reconnect lazily; the others' stay."""
        self.cluster_node(slot).update_active_connections_for_reconnect()

    # --- health ---

    async def ping(self) -> float:
        """Round-trip seconds of a PING on the connection calls use (opened if needed)."""
        started = time.perf_counter()
        async with asyncio.timeout(self.call_timeout):
            if self.cluster:
                await self.client.ping()
                return time.perf_counter() - started
            wire = await self._connected()
            await wire.call(("PING",))
        latency = time.perf_counter() - started
        assert self.target is not None
        if self.target.locate is not None:
            await self._follow_master(wire)
        return latency

    async def _follow_master(self, wire: Wire) -> None:
        """Sentinel: leave a master that Sentinel no longer names. Until Sentinel demotes it,
        an old master still accepts writes, which its resync then throws away (seconds of
        them after a forced failover); asking at every heartbeat bounds that to one interval."""
        assert self.target is not None and self.target.locate is not None
        try:
            async with asyncio.timeout(self.call_timeout):
                master = await self.target.locate()
        except (*UNAVAILABLE, rex.RedisError):  # type: ignore[misc]  # mypy: a starred except
            # No sentinel answers: the master we talk to still does, so that is no outage
            # (the breaker would switch to memory for nothing); check again next heartbeat.
            return
        if wire is self._wire and wire.address is not None and wire.address != tuple(master):
            self._leave_wire(wire)

    async def start(self) -> None:
        """Sentinel: follow +switch-master as soon as a sentinel announces it."""
        if self.target is not None and self.target.announcements is not None and not self._tasks:
            task = asyncio.get_running_loop().create_task(
                self._follow_announcements(), name="upak-sentinel"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _follow_announcements(self) -> None:
        assert self.target is not None and self.target.announcements is not None
        async for address in self.target.announcements():
            wire = self._wire
            if wire is not None and wire.address is not None and wire.address != address:
                # The next call connects again and asks Sentinel, which names the new master.
                self.master_announcements += 1
                self._leave_wire(wire)

    async def reset_connections(self) -> None:
        """Drop connections after an outage: they may point at a dead server process, or at a
        master that Sentinel has since demoted."""
        if self.cluster:
            # RedisCluster re-discovers its nodes and reconnects on the next command.
            await self.client.aclose()
            return
        self._drop_wire()
        await self.client.connection_pool.disconnect()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._opening is not None:
            self._opening.cancel()
        self._drop_wire()
        close = getattr(self.client, "aclose", None) or self.client.close
        await close()


# One call of a loop step, as the batcher holds it: (the connection it is for, None on
# Cluster; the operation, None for a WAIT only; keys; record; its caller's future; sent as EVAL
# with the script's text; the future of the WAIT behind it, for a durable call).
_Call = tuple[
    Any,
    "Operation[Any, Any] | None",
    Sequence[str],
    Any,
    "asyncio.Future[Any] | None",
    bool,
    "asyncio.Future[int] | None",
]


def _share_wait(waits: list[asyncio.Future[int]]) -> Any:
    """The done-callback of a step's WAIT: each durable call hears the replicas' count."""

    def done(waited: asyncio.Future[Any]) -> None:
        if waited.cancelled():
            fail(waits, asyncio.CancelledError())
        elif waited.exception() is not None:
            fail(waits, waited.exception())  # type: ignore[arg-type]
        else:
            acked = int(waited.result())
            for future in waits:
                settle(future, acked)

    return done


def _retrieved(future: asyncio.Future[Any]) -> None:
    # A future whose caller may not await it: read its outcome so asyncio stays quiet.
    if not future.cancelled():
        future.exception()


def _as_store_error(exc: BaseException) -> BaseException:
    """Server conditions pass through for the failover; anything else Redis said is a
    StoreError (a programming error: the web layer answers 503)."""
    if isinstance(exc, StoreError) or condition_of(exc) is not None:
        return exc
    if isinstance(exc, rex.RedisError | rex.RedisClusterException):
        return StoreError(f"Redis refused the operation: {exc}")
    return exc

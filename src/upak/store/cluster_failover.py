"""ClusterFailoverStore: Redis Cluster degrades per master, not per cluster.

One FailoverStore per master's slot range, each with its own breaker, heartbeat, hysteresis
and journal, all over one shared memory (keys of different slots never collide). A call goes
to the store of its first key's slot (an operation's keys share one slot: the contract), so a
dead master sends only its own keys to memory; keys whose master answers stay on Redis.

The stores are keyed by the slot ranges each master owned when the service started, not by
node: when a replica is promoted it serves the same range, the range's heartbeat pings
whichever node redis-py's refreshed slot map names for it, and the journal is written back
there (scripts route by key). A slot moved by resharding keeps the store of its old range
(redis-py follows the MOVED), so only the grain of degradation is as at start. A cluster that
cannot be read at start gets one store for all slots, split at the next restart.

A call whose keys span slots (a login's IP and email limits) is split by its operation's
`BatchCodec.parts`, each part sent to its own slot's store, and the replies joined.

Every node's calls of one loop step still go out together (`RedisStore._evalsha_all`: one
pipeline per node, all at once), each node's callers get their replies when that node
answers, and one node's failure (or hang) fails (or holds) only its own calls.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.crc import key_slot

from upak.store.base import Store
from upak.store.batch import Part, StepBatch
from upak.store.failover import FailoverStore
from upak.store.memory import MemoryData, MemoryStore
from upak.store.operation import Mode, Operation
from upak.store.redis import RedisStore

A = TypeVar("A")
T = TypeVar("T")
SLOTS = 16384


def _slot(key: str) -> int:
    return key_slot(key.encode())


@dataclass(frozen=True)
class SlotRanges:
    """The slots one master served at start, e.g. ((0, 5460),)."""

    ranges: tuple[tuple[int, int], ...]

    @property
    def first(self) -> int:
        return self.ranges[0][0]

    def __str__(self) -> str:
        return ",".join(f"{a}-{b}" for a, b in self.ranges)

    def hash_tag(self) -> str:
        """A hash tag whose slot is in these ranges: the probe key of this range's store."""
        for n in range(100_000):
            slot = key_slot(str(n).encode())
            if any(a <= slot <= b for a, b in self.ranges):
                return str(n)
        raise ValueError(f"no short hash tag falls in slots {self}")  # never for >= 1 slot


class ClusterNodeView:
    """The shared Cluster RedisStore as one slot range's FailoverStore sees it: calls go
    through the shared per-node pipelines; the heartbeat pings, and the recovery resets,
    only the master serving this range now."""

    def __init__(self, cluster: RedisStore, slots: SlotRanges) -> None:
        self.cluster = cluster
        self.slots = slots

    @property
    def mode(self) -> Mode:
        return Mode.REDIS

    @property
    def calls_sent(self) -> int:
        return self.cluster.calls_sent

    @property
    def batch(self) -> StepBatch[Any]:
        return self.cluster.batch

    def slot_of(self, key: str) -> int | None:
        return self.cluster.slot_of(key)

    @property
    def node(self) -> str:
        """The address of the master serving this range, as redis-py knows it now."""
        try:
            return str(self.cluster.cluster_node(self.slots.first).name)
        except Exception:  # no slot map yet
            return "unknown"

    async def run(self, op: Operation[A, T], keys: Sequence[str], args: A) -> T:
        return await self.cluster.run(op, keys, args)

    async def run_raw(self, op: Operation[A, Any], keys: Sequence[str], args: A) -> Any:
        return await self.cluster.run_raw(op, keys, args)

    async def ping(self) -> float:
        return await self.cluster.ping_slot(self.slots.first)

    async def reset_connections(self) -> None:
        await self.cluster.reset_slot(self.slots.first)

    async def start(self) -> None:
        """The shared client is started and closed by the ClusterFailoverStore."""

    async def close(self) -> None:
        """(See start.)"""


# Builds one slot range's FailoverStore on its view (build_store passes the settings in).
NodeStoreFactory = Callable[[ClusterNodeView], FailoverStore]


class ClusterFailoverStore(Store):
    """A FailoverStore per master's slot range, with the FailoverStore's public surface."""

    def __init__(self, redis: RedisStore, memory: MemoryStore, factory: NodeStoreFactory) -> None:
        self.redis = redis
        self.memory = memory
        self._factory = factory
        self._callbacks: list[Callable[[MemoryData], Awaitable[None]]] = []
        self._started = False
        self.topology_error: str | None = None
        self._use([SlotRanges(((0, SLOTS - 1),))])
        self.stats = ClusterStats(self)

    def _use(self, ranges: list[SlotRanges]) -> None:
        self.stores = [self._factory(ClusterNodeView(self.redis, r)) for r in ranges]
        self.ranges = ranges
        self._store_of_slot = array("H", bytes(2 * SLOTS))  # slot -> index in `stores`
        for index, each in enumerate(ranges):
            for a, b in each.ranges:
                self._store_of_slot[a : b + 1] = array("H", [index]) * (b - a + 1)
        for store in self.stores:
            for callback in self._callbacks:
                store.on_recovery(callback)

    def store_for(self, key: str) -> FailoverStore:
        return self.stores[self._store_of_slot[key_slot(key.encode())]]

    @property
    def mode(self) -> Mode:
        """Memory if any range is on memory (the service is degraded), else Redis."""
        degraded = any(s.mode is Mode.MEMORY for s in self.stores)
        return Mode.MEMORY if degraded else Mode.REDIS

    def on_recovery(self, callback: Callable[[MemoryData], Awaitable[None]]) -> None:
        self._callbacks.append(callback)
        for store in self.stores:
            store.on_recovery(callback)

    def submit(self, op: Operation[A, T], keys: Sequence[str], args: A) -> Awaitable[T]:
        if op.batch is not None and len(keys) > 1:
            parts = op.batch.parts(keys, args, _slot)
            if parts is not None:
                return self._run_parts(op, args, parts)
        return self.store_for(keys[0]).submit(op, keys, args)

    async def run(self, op: Operation[A, T], keys: Sequence[str], args: A) -> T:
        if op.batch is not None and len(keys) > 1:
            parts = op.batch.parts(keys, args, _slot)
            if parts is not None:
                return await self._run_parts(op, args, parts)
        return await self.store_for(keys[0]).run(op, keys, args)

    async def _run_parts(self, op: Operation[A, T], args: A, parts: list[Part[A]]) -> T:
        """A call whose keys span slots, as its operation splits it (`BatchCodec.parts`):
        each slot's part to that slot's store (its own breaker), side by side, then joined."""
        codec = op.batch
        assert codec is not None
        replies = await asyncio.gather(
            *(self.store_for(part.keys[0]).run(op, part.keys, part.record) for part in parts)
        )
        return codec.join(args, parts, replies)  # type: ignore[no-any-return]

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            ranges = await self._master_ranges()
        except Exception as exc:  # the cluster is away: one store for all, split at restart
            self.topology_error = f"{type(exc).__name__}: {exc}"
            ranges = []
        if len(ranges) > 1:
            self._use(ranges)
        await asyncio.gather(*(store.start() for store in self.stores))

    async def _master_ranges(self) -> list[SlotRanges]:
        """Each master's slot ranges, read from redis-py's slot map (CLUSTER SLOTS)."""
        client = self.redis.client
        async with asyncio.timeout(self.redis.call_timeout):
            await client.initialize()
        owner: dict[str, list[list[int]]] = {}
        for slot in range(SLOTS):
            nodes = client.nodes_manager.slots_cache.get(slot)
            if not nodes:
                raise RuntimeError(f"slot {slot} is not covered")
            spans = owner.setdefault(nodes[0].name, [])
            if spans and spans[-1][1] == slot - 1:
                spans[-1][1] = slot
            else:
                spans.append([slot, slot])
        return [SlotRanges(tuple((a, b) for a, b in spans)) for spans in owner.values()]

    async def ping(self) -> float | None:
        latencies = await asyncio.gather(*(store.ping() for store in self.stores))
        known = [latency for latency in latencies if latency is not None]
        return max(known) if len(known) == len(latencies) else None

    async def close(self) -> None:
        for store in self.stores:
            await store.close()  # each closes its view: nothing
        await self.redis.close()


class ClusterStats:
    """FailoverStats' fields over all slot ranges (counters summed, the worst mode, the
    latest switch), read live, plus `nodes`: each range's own state for /health."""

    def __init__(self, owner: ClusterFailoverStore) -> None:
        self._owner = owner

    def _all(self) -> list[Any]:
        return [store.stats for store in self._owner.stores]

    def _sum(self, name: str) -> int:
        return sum(getattr(stats, name) for stats in self._all())

    @property
    def mode(self) -> Mode:
        return self._owner.mode

    @property
    def since(self) -> float:
        return max((s.since for s in self._all()), default=time.time())

    @property
    def condition(self) -> str | None:
        return next((s.condition for s in self._all() if s.mode is Mode.MEMORY), None)

    @property
    def last_error(self) -> str | None:
        degraded = [s.last_error for s in self._all() if s.mode is Mode.MEMORY]
        return next(iter(degraded), None) or next(
            (s.last_error for s in self._all() if s.last_error), None
        )

    @property
    def latency(self) -> float | None:
        known = [s.latency for s in self._all() if s.latency is not None]
        return max(known) if known else None

    @property
    def hold_seconds(self) -> float:
        return max((s.hold_seconds for s in self._all()), default=0.0)

    def __getattr__(self, name: str) -> int:
        if name in _COUNTERS:
            return self._sum(name)
        raise AttributeError(name)

    def nodes(self) -> list[dict[str, Any]]:
        out = []
        for store, ranges in zip(self._owner.stores, self._owner.ranges, strict=True):
            view = store.redis
            out.append(
                {
                    "slots": str(ranges),
                    "node": view.node if isinstance(view, ClusterNodeView) else "unknown",
                    **store.stats.as_dict(),
                }
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        latency = self.latency
        return {
            "mode": str(self.mode),
            "since": self.since,
            "condition": self.condition,
            "last_error": self.last_error,
            "latency_ms": None if latency is None else round(latency * 1000, 3),
            **{name: self._sum(name) for name in _COUNTERS},
            "hold_seconds": self.hold_seconds,
            "fallback": self._owner.memory.shared_by,
        }


_COUNTERS = (
    "fallback_calls",
    "bypassed_calls",
    "host_cached_calls",
    "switches_to_memory",
    "switches_to_redis",
    "followed_host",
    "written_back",
    "writeback_dropped",
    "pending_writeback",
    "read_through_calls",
)

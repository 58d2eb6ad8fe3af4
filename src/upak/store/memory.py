"""MemoryStore: the Store served from process memory, and the fallback's outage state.

The keyspace the twins run on is `upak.store.keyspace` (re-exported here, where callers
have always found it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from upak.store.base import Store
from upak.store.journal import Entry, Journal, MemoryJournal, Outage
from upak.store.keyspace import (
    Clock,
    IntLog,
    KeyRegistry,
    MemoryData,
    _ZSet,
    to_bytes,
)
from upak.store.operation import Mode, Operation

__all__ = [
    "NOT_SERVED",
    "Clock",
    "IntLog",
    "KeyRegistry",
    "MemoryData",
    "MemoryStore",
    "_ZSet",
    "to_bytes",
]

A = TypeVar("A")
T = TypeVar("T")


class _NotServed:
    def __repr__(self) -> str:
        return "NOT_SERVED"


# `execute_cached`'s answer when the fallback does not serve the operation (caching off).
NOT_SERVED: Any = _NotServed()


class MemoryStore(Store):
    """The Store served entirely from process memory (the seed's fallback mode).

    As a FailoverStore's fallback it also keeps what the fallback knows of an outage: the
    journal of calls owed to Redis, and, per partition (one breaker: a Redis, or one master's
    slot range), whether the host is degraded and until when its hysteresis holds it there.
    For a process of its own the host is the process; the host tier (`upak.store.host`)
    keeps the same things in a file every worker of the host shares."""

    shared_by = "process"  # who sees this fallback's state: this process only
    # Whether `Fallback.HOST` operations (the cache) are served during an outage: only by a
    # fallback every process of the service writes to. Process memory is not one: another
    # process's invalidation would never reach it, so caching is off here (the seed's meaning).
    caches = False

    def __init__(
        self, clock: Clock = time.time, max_keys: int = 200_000, journal_max: int = 1_000_000
    ) -> None:
        self.data = MemoryData(clock=clock, max_keys=max_keys)
        self.journal = MemoryJournal(journal_max)
        self._outages: dict[str, Outage] = {}
        self._writing: set[str] = set()
        self._start_memo()

    def _start_memo(self, remember_interval: float = 5.0) -> None:
        """The mirror's memo: Redis's last answer per (operation, keys), and when it was
        copied. The same answer again within `remember_interval` s is not copied again."""
        self.remember_interval = remember_interval
        self.memo_max = 100_000
        self.skipped_remembers = 0
        self._memo: dict[tuple[str, ...], tuple[Any, float]] = {}

    @property
    def mode(self) -> Mode:
        return Mode.MEMORY

    def execute(
        self,
        op: Operation[A, Any],
        keys: Sequence[str],
        args: A,
        entry: Entry | None = None,
        twin: Callable[[MemoryData, Sequence[str], A], Any] | None = None,
    ) -> Any:
        """Run `twin` (by default the memory half of `op`) and return its raw, Redis-shaped
        reply; journal `entry` (a call Redis must see after the outage) in the same step."""
        return self._run_on(self.data, twin or op.memory, keys, args, entry)

    def execute_cached(
        self, op: Operation[A, Any], keys: Sequence[str], args: A, partition: str
    ) -> Any:
        """Run a `Fallback.HOST` operation while `partition` is down, or return NOT_SERVED
        (the caller answers with the operation's `bypass`). Process memory never serves one."""
        return NOT_SERVED

    def _run_on(
        self,
        data: MemoryData,
        twin: Callable[[MemoryData, Sequence[str], A], Any],
        keys: Sequence[str],
        args: A,
        entry: Entry | None,
    ) -> Any:
        reply = twin(data, keys, args)
        if entry is not None:
            self.journal.append(entry)
        return reply

    def remember(self, op: Operation[A, Any], keys: Sequence[str], args: A, reply: Any) -> None:
        """Keep the copy `op.remember` makes of Redis's `reply` for the next outage: only
        when Redis's answer changed, or at most once per `remember_interval` s, so the
        request path while Redis is up does not rebuild the same copy on every call. A
        revocation (`Operation.precious`) is applied every time."""
        assert op.remember is not None
        if self._memoised(op, keys, reply):
            return
        op.remember(self.data, keys, args, reply)
        self._memoise(op, keys, reply)

    def _memo_clock(self) -> float:
        return self.data._clock()

    def _memoised(self, op: Operation[Any, Any], keys: Sequence[str], reply: Any) -> bool:
        if op.precious:
            return False
        seen = self._memo.get((op.name, *keys))
        if seen is None or seen[0] != reply:
            return False
        if self._memo_clock() - seen[1] >= self.remember_interval:
            return False
        self.skipped_remembers += 1
        return True

    def _memoise(self, op: Operation[Any, Any], keys: Sequence[str], reply: Any) -> None:
        if op.precious:
            return
        if len(self._memo) >= self.memo_max:
            self._memo.clear()
        self._memo[(op.name, *keys)] = (reply, self._memo_clock())

    # --- the outage, as every worker of the host sees it (here: this process) ---

    def outage(self, partition: str) -> Outage | None:
        """The host's outage of `partition`, None while the host is on Redis."""
        return self._outages.get(partition)

    def mark_down(self, partition: str, outage: Outage) -> None:
        """The host is degraded for `partition`; a longer hold already set is kept."""
        known = self._outages.get(partition)
        if known is None or known.hold_until < outage.hold_until:
            self._outages[partition] = outage

    def mark_up(self, partition: str, now: float) -> bool:
        """Back on Redis, if nothing is still owed to it and the hold has passed. Checked
        and set in one step, so no journaled call slips in between."""
        outage = self._outages.get(partition)
        if self.journal.size(partition) or (outage is not None and outage.hold_until > now):
            return False
        self._outages.pop(partition, None)
        self._memo.clear()  # the outage changed the copies: the next answers are copied again
        return True

    @contextmanager
    def writer(self, partition: str) -> Iterator[list[Journal]]:
        """The journals this caller may write back now; one writer per partition at a time."""
        if partition in self._writing:
            yield []
            return
        self._writing.add(partition)
        try:
            yield [self.journal]
        finally:
            self._writing.discard(partition)

    def pending(self, partition: str) -> int:
        """Journaled calls of `partition` not yet written back."""
        return self.journal.size(partition)

    def dropped(self, partition: str) -> int:
        """Journaled calls of `partition` the journal's cap dropped."""
        return self.journal.dropped.get(partition, 0)

    async def run(self, op: Operation[A, T], keys: Sequence[str], args: A) -> T:
        return op.parse(self.execute(op, keys, args))

    async def ping(self) -> float | None:
        return None

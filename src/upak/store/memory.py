"""The memory twin: a small Redis-shaped keyspace in process memory.

`MemoryData` offers the handful of Redis commands the operations' memory halves use, with
Redis's semantics (types, TTLs in milliseconds, replies as bytes and ints), so a memory twin
reads like its Lua script. It is bounded: past `max_keys` the least recently used key goes,
as `maxmemory-policy allkeys-lru` would. Operations run synchronously inside one event-loop
step, which is what makes each of them atomic with respect to concurrent callers.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from upak.store.base import Store
from upak.store.journal import Entry, Journal, MemoryJournal, Outage
from upak.store.operation import Arg, Mode, Operation, StoreError

A = TypeVar("A")
T = TypeVar("T")
Clock = Callable[[], float]

_WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


def to_bytes(value: Arg) -> bytes:
    """Encode an argument the way Redis stores it."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


class MemoryData:
    """A keyspace of bytes, hashes and sorted sets with millisecond TTLs."""

    # Whether something other than `max_keys` bounds this keyspace (the host tier's byte
    # budgets): a twin may then skip bookkeeping it keeps only to bound process memory.
    bounded_in_bytes = False

    def __init__(self, clock: Clock = time.time, max_keys: int = 200_000) -> None:
        self._clock = clock
        self.max_keys = max_keys
        # key -> [value, expires_at_ms or None]; ordered by last use for LRU eviction.
        self._keys: OrderedDict[str, list[Any]] = OrderedDict()

    # --- time ---

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- raw access, for twins that need more than the commands below ---

    def entry(self, key: str, kind: type | None = None) -> Any:
        """The live value at `key` (None if absent or expired), type-checked like Redis."""
        slot = self._keys.get(key)
        if slot is None:
            return None
        expires = slot[1]
        if expires is not None and expires <= self.now_ms():
            del self._keys[key]
            return None
        self._keys.move_to_end(key)
        if kind is not None and not isinstance(slot[0], kind):
            raise StoreError(_WRONGTYPE)
        return slot[0]

    def put(self, key: str, value: Any, expires_at_ms: int | None = None, keep_ttl: bool = False):
        slot = self._keys.get(key)
        if keep_ttl and slot is not None:
            expires_at_ms = slot[1]
        self._keys[key] = [value, expires_at_ms]
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def clear(self) -> None:
        self._keys.clear()

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[str]:
        return [k for k in list(self._keys) if self.entry(k) is not None]

    # --- generic commands ---

    def exists(self, key: str) -> int:
        return int(self.entry(key) is not None)

    def delete(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self.entry(key) is not None:
                del self._keys[key]
                removed += 1
        return removed

    def pttl(self, key: str) -> int:
        if self.entry(key) is None:
            return -2
        expires = self._keys[key][1]
        return -1 if expires is None else max(expires - self.now_ms(), 0)

    def pexpire(self, key: str, ms: int) -> int:
        if self.entry(key) is None:
            return 0
        if ms <= 0:
            del self._keys[key]
        else:
            self._keys[key][1] = self.now_ms() + ms
        return 1

    # --- strings ---

    def get(self, key: str) -> bytes | None:
        return self.entry(key, bytes)

    def set(
        self,
        key: str,
        value: Arg,
        px: int | None = None,
        nx: bool = False,
        xx: bool = False,
        keepttl: bool = False,
    ) -> bool:
        present = self.entry(key) is not None
        if (nx and present) or (xx and not present):
            return False
        expires = self.now_ms() + int(px) if px is not None else None
        self.put(key, to_bytes(value), expires, keep_ttl=keepttl)
        return True

    # --- hashes ---

    def _hash(self, key: str, create: bool = False) -> dict[bytes, bytes] | None:
        value = self.entry(key, dict)
        if value is None and create:
            value = {}
            self.put(key, value)
        return value

    def hset(self, key: str, mapping: dict[Arg, Arg]) -> int:
        data = self._hash(key, create=True)
        assert data is not None
        added = 0
        for field, value in mapping.items():
            field_bytes = to_bytes(field)
            added += field_bytes not in data
            data[field_bytes] = to_bytes(value)
        return added

    def hget(self, key: str, field: Arg) -> bytes | None:
        data = self._hash(key)
        return None if data is None else data.get(to_bytes(field))

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self._hash(key) or {})

    # --- sorted sets (member -> score) ---

    def _zset(self, key: str, create: bool = False) -> dict[bytes, float] | None:
        value = self.entry(key, _ZSet)
        if value is None and create:
            value = _ZSet()
            self.put(key, value)
        return value

    def zadd(self, key: str, mapping: dict[Arg, float]) -> int:
        data = self._zset(key, create=True)
        assert data is not None
        added = 0
        for member, score in mapping.items():
            member_bytes = to_bytes(member)
            added += member_bytes not in data
            data[member_bytes] = float(score)
        return added

    def zrem(self, key: str, *members: Arg) -> int:
        data = self._zset(key)
        if data is None:
            return 0
        removed = sum(data.pop(to_bytes(m), None) is not None for m in members)
        if not data:
            self.delete(key)
        return removed

    def zcard(self, key: str) -> int:
        return len(self._zset(key) or ())

    def zrange_withscores(self, key: str) -> list[tuple[bytes, float]]:
        data = self._zset(key) or {}
        return sorted(data.items(), key=lambda i: (i[1], i[0]))


class _ZSet(dict):  # type: ignore[type-arg]
    """A sorted set: a distinct type, so WRONGTYPE checks tell it from a hash."""


class KeyRegistry(OrderedDict):  # type: ignore[type-arg]
    """A twin's ordered map of key names to key names, least recently used first (the
    session mirror's registry). Declared here so the host tier can store it."""


class IntLog(deque):  # type: ignore[type-arg]
    """A twin's log of whole numbers, oldest first (the rate limiter's admission times in
    µs). Declared here, with the other value types, so the host tier can store it."""


class MemoryStore(Store):
    """The Store served entirely from process memory (the seed's fallback mode).

    As a FailoverStore's fallback it also keeps what the fallback knows of an outage: the
    journal of calls owed to Redis, and, per partition (one breaker: a Redis, or one master's
    slot range), whether the host is degraded and until when its hysteresis holds it there.
    For a process of its own the host is the process; the host tier (`upak.store.host`)
    keeps the same things in a file every worker of the host shares."""

    shared_by = "process"  # who sees this fallback's state: this process only

    def __init__(
        self, clock: Clock = time.time, max_keys: int = 200_000, journal_max: int = 1_000_000
    ) -> None:
        self.data = MemoryData(clock=clock, max_keys=max_keys)
        self.journal = MemoryJournal(journal_max)
        self._outages: dict[str, Outage] = {}
        self._writing: set[str] = set()
        # The mirror's memo: Redis's last answer per (operation, keys), and when it was
        # copied. The same answer again within `remember_interval` s is not copied again.
        self.remember_interval = 5.0
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
        reply = (twin or op.memory)(self.data, keys, args)
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

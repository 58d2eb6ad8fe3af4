"""The twins' keyspace: a small Redis-shaped store of values in process memory.

`MemoryData` offers the handful of Redis commands the operations' memory halves use, with
Redis's semantics (types, TTLs in milliseconds, replies as bytes and ints), so a memory twin
reads like its Lua script. It is bounded: past `max_keys` the least recently used key goes,
as `maxmemory-policy allkeys-lru` would. Operations run synchronously inside one event-loop
step, which is what makes each of them atomic with respect to concurrent callers.

It sits below the operations (`upak.store.operation` types its twins with it) and imports
nothing of the store but its vocabulary (`upak.store.core`): no import circle.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from upak.store.core import Arg, StoreError

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
    """A twin's log of whole numbers, newest first like the Redis list it twins (the rate
    limiter's admission times in µs). Declared here, with the other value types, so the
    host tier can store it."""

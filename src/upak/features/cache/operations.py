"""The cache's operations, each Lua script next to its memory twin: READ, STAMP (a tag's
version), LEASE and RELEASE (single-flight across processes), WRITE. All BYPASS: while
Redis is away caching is off and each returns its `bypass` result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from upak.features.cache.codec import _bytes
from upak.store import Arg, Fallback, Operation

if TYPE_CHECKING:
    from upak.store import MemoryData


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# The reply of a cache operation while Redis is away (caching is off).
BYPASSED: Any = _Marker("BYPASSED")
# What a lookup returns while Redis is away: not a miss (the counters tell them apart).
CACHING_OFF: Any = _Marker("CACHING_OFF")


def _read_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> bytes | None:
    return data.get(keys[0])


# A plain GET, but BYPASS: during an outage the read is a miss served by the source.
READ: Operation[Any] = Operation(
    name="cache_read",
    lua="return redis.call('GET', KEYS[1])",
    memory=_read_memory,
    fallback=Fallback.BYPASS,
    bypass=lambda args: BYPASSED,
)


def _stamp_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> bytes:
    token, min_ttl = args[0], int(args[1])
    current = data.get(keys[0])
    if current is None:
        data.set(keys[0], token, px=min_ttl)
        return data.get(keys[0]) or b""
    if data.pttl(keys[0]) < min_ttl:
        data.pexpire(keys[0], min_ttl)
    return current


# The tag's current version token, created if missing; the key lives at least `min_ttl` ms so
# an entry stamped now is not killed by its tag's version expiring before the entry does.
STAMP: Operation[Any] = Operation(
    name="cache_stamp",
    lua="""
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
""",
    memory=_stamp_memory,
    fallback=Fallback.BYPASS,
    bypass=lambda args: BYPASSED,
)


def _lease_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    return int(data.set(keys[0], args[0], px=int(args[1]), nx=True))


# One computation across processes: the first to take the lease computes. During an outage
# every caller "has" it: each process computes for itself (caching is off anyway).
LEASE: Operation[bool] = Operation(
    name="cache_lease",
    lua="return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0",
    memory=_lease_memory,
    parse=bool,
    fallback=Fallback.BYPASS,
    bypass=lambda args: True,
)


def _write_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    data.set(keys[0], args[0], px=int(args[1]))
    if args[2] != "" and data.get(keys[1]) == _bytes(args[2]):
        data.delete(keys[1])
    return 1


# Store the entry and release our lease (if we still hold it) in one step: waiters polling the
# entry see it the moment the lease goes. KEYS: entry, lease (one slot: `{e:KEY}`).
WRITE: Operation[bool] = Operation(
    name="cache_write",
    lua="""
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
""",
    memory=_write_memory,
    parse=bool,
    fallback=Fallback.BYPASS,
    bypass=lambda args: False,
)


def _release_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    if data.get(keys[0]) == _bytes(args[0]):
        return data.delete(keys[0])
    return 0


# Give the lease back after a failed computation, only if it is still ours.
RELEASE: Operation[bool] = Operation(
    name="cache_release",
    lua="""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
    memory=_release_memory,
    parse=bool,
    fallback=Fallback.BYPASS,
    bypass=lambda args: False,
)


# Deletes and invalidations are the store's own primitives, and like them written back after
# an outage: the entry Redis kept must not outlive a delete, and a payment processed while
# Redis was away (a fresh random version for the user's tag) must still kill what Redis holds
# when it returns.

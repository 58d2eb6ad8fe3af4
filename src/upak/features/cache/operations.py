"""The cache's operations, each Lua script next to its memory twin: READ, STAMP (a tag's
version), LEASE and RELEASE (single-flight across processes), WRITE. All `Fallback.HOST`:
while Redis is away they run on the host tier when that tier is the whole service's (one
host), and otherwise caching is off and each returns its `bypass` result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from upak.store import Fallback, Operation
from upak.store.operation import NoArgs

if TYPE_CHECKING:
    from upak.store import MemoryData


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# The reply of a cache operation while Redis is away and caching is off.
BYPASSED: Any = _Marker("BYPASSED")
# What a lookup returns while Redis is away: not a miss (the counters tell them apart).
CACHING_OFF: Any = _Marker("CACHING_OFF")


class Stamp(NamedTuple):
    """STAMP's record. ARGV: token (the version if none is set), min_ttl_ms."""

    token: str
    min_ttl_ms: int


class Lease(NamedTuple):
    """LEASE's record. ARGV: token, ttl_ms."""

    token: str
    ttl_ms: int


class Write(NamedTuple):
    """WRITE's record. ARGV: blob, keep_ms, lease_token ('' when no lease is held)."""

    blob: bytes
    keep_ms: int
    lease_token: str


class Holder(NamedTuple):
    """RELEASE's record. ARGV: token."""

    token: str


def _read_memory(data: MemoryData, keys: Sequence[str], args: NoArgs) -> bytes | None:
    return data.get(keys[0])


# A plain GET; during an outage without the host's cache, a miss served by the source.
READ: Operation[NoArgs, Any] = Operation(
    name="cache_read",
    lua="return redis.call('GET', KEYS[1])",
    args=NoArgs,
    memory=_read_memory,
    fallback=Fallback.HOST,
    bypass=lambda args: BYPASSED,
)


def _stamp_memory(data: MemoryData, keys: Sequence[str], args: Stamp) -> bytes:
    token, min_ttl = args.token, args.min_ttl_ms
    current = data.get(keys[0])
    if current is None:
        data.set(keys[0], token, px=min_ttl)
        return data.get(keys[0]) or b""
    if data.pttl(keys[0]) < min_ttl:
        data.pexpire(keys[0], min_ttl)
    return current


# The tag's current version token, created if missing; the key lives at least `min_ttl` ms so
# an entry stamped now is not killed by its tag's version expiring before the entry does.
STAMP: Operation[Stamp, Any] = Operation(
    name="cache_stamp",
    args=Stamp,
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
    fallback=Fallback.HOST,
    bypass=lambda args: BYPASSED,
)


def _lease_memory(data: MemoryData, keys: Sequence[str], args: Lease) -> int:
    return int(data.set(keys[0], args.token, px=args.ttl_ms, nx=True))


# One computation across processes: the first to take the lease computes (in an outage, the
# first of the host's workers, in the tier). With caching off every caller "has" it: each
# process computes for itself.
LEASE: Operation[Lease, bool] = Operation(
    name="cache_lease",
    args=Lease,
    lua="return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0",
    memory=_lease_memory,
    parse=bool,
    fallback=Fallback.HOST,
    bypass=lambda args: True,
)


def _write_memory(data: MemoryData, keys: Sequence[str], args: Write) -> int:
    data.set(keys[0], args.blob, px=args.keep_ms)
    if args.lease_token != "" and data.get(keys[1]) == args.lease_token.encode():
        data.delete(keys[1])
    return 1


# Store the entry and release our lease (if we still hold it) in one step: waiters polling the
# entry see it the moment the lease goes. KEYS: entry, lease (one slot: `{e:KEY}`).
WRITE: Operation[Write, bool] = Operation(
    name="cache_write",
    args=Write,
    lua="""
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
""",
    memory=_write_memory,
    parse=bool,
    fallback=Fallback.HOST,
    bypass=lambda args: False,
)


def _release_memory(data: MemoryData, keys: Sequence[str], args: Holder) -> int:
    if data.get(keys[0]) == args.token.encode():
        return data.delete(keys[0])
    return 0


# Give the lease back after a failed computation, only if it is still ours.
RELEASE: Operation[Holder, bool] = Operation(
    name="cache_release",
    args=Holder,
    lua="""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
    memory=_release_memory,
    parse=bool,
    fallback=Fallback.HOST,
    bypass=lambda args: False,
)


# Deletes and invalidations are the store's own primitives, and like them written back after
# an outage: the entry Redis kept must not outlive a delete, and a payment processed while
# Redis was away (a fresh random version for the user's tag) must still kill what Redis holds
# when it returns.

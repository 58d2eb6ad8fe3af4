"""The primitives every feature may use: claim-once, get, set, delete.

Each is an `Operation`: its Lua script and its memory twin side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from upak.store.operation import Arg, NoArgs, Operation

if TYPE_CHECKING:
    from upak.store.keyspace import MemoryData


class Expiring(NamedTuple):
    """A value and how long it lives (claim-once, set). ARGV: value, ttl_ms."""

    value: Arg
    ttl_ms: int


def _remaining_ttl(args: Expiring, elapsed_ms: int) -> Expiring | None:
    # A claim written back after an outage keeps the TTL it had left, not a fresh one.
    left = args.ttl_ms - elapsed_ms
    return args._replace(ttl_ms=left) if left > 0 else None


def _claim_once_memory(data: MemoryData, keys: Sequence[str], args: Expiring) -> int:
    return int(data.set(keys[0], args.value, px=args.ttl_ms, nx=True))


CLAIM_ONCE: Operation[Expiring, bool] = Operation(
    name="claim_once",
    lua="return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0",
    args=Expiring,
    memory=_claim_once_memory,
    parse=bool,
    writeback=True,
    replay_args=_remaining_ttl,
)


def _get_memory(data: MemoryData, keys: Sequence[str], args: NoArgs) -> bytes | None:
    return data.get(keys[0])


GET: Operation[NoArgs, bytes | None] = Operation(
    name="get",
    lua="return redis.call('GET', KEYS[1])",
    args=NoArgs,
    memory=_get_memory,
)


def _set_memory(data: MemoryData, keys: Sequence[str], args: Expiring) -> int:
    data.set(keys[0], args.value, px=args.ttl_ms)
    return 1


SET: Operation[Expiring, None] = Operation(
    name="set",
    lua="redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1",
    args=Expiring,
    memory=_set_memory,
    parse=lambda reply: None,
    writeback=True,
    replay_args=_remaining_ttl,
)


def _delete_memory(data: MemoryData, keys: Sequence[str], args: NoArgs) -> int:
    return data.delete(keys[0])


DELETE: Operation[NoArgs, bool] = Operation(
    name="delete",
    lua="return redis.call('DEL', KEYS[1])",
    args=NoArgs,
    memory=_delete_memory,
    parse=bool,
    writeback=True,
)


def _probe_memory(data: MemoryData, keys: Sequence[str], args: NoArgs) -> int:
    return 1


# The recovery probe writes, not just PINGs: a full (OOM), misconfigured (MISCONF) or
# replica-short (NOREPLICAS) Redis answers PING while it refuses every write.
WRITE_PROBE: Operation[NoArgs, bool] = Operation(
    name="store.probe",
    lua="redis.call('SET', KEYS[1], '1', 'PX', 1000) return 1",
    args=NoArgs,
    memory=_probe_memory,
    parse=bool,
)

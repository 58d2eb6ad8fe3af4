"""The primitives every feature may use: claim-once, get, set, delete.

Each is an `Operation`: its Lua script and its memory twin side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from upak.store.operation import Arg, Operation

if TYPE_CHECKING:
    from upak.store.memory import MemoryData


def _remaining_ttl(args: Sequence[Arg], elapsed_ms: int) -> Sequence[Arg] | None:
    # A claim written back after an outage keeps the TTL it had left, not a fresh one.
    value, ttl_ms = args
    left = int(ttl_ms) - elapsed_ms
    return (value, left) if left > 0 else None


def _claim_once_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    return int(data.set(keys[0], args[0], px=int(args[1]), nx=True))


CLAIM_ONCE: Operation[bool] = Operation(
    name="claim_once",
    lua="return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0",
    memory=_claim_once_memory,
    parse=bool,
    writeback=True,
    replay_args=_remaining_ttl,
)


def _get_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> bytes | None:
    return data.get(keys[0])


GET: Operation[bytes | None] = Operation(
    name="get",
    lua="return redis.call('GET', KEYS[1])",
    memory=_get_memory,
)


def _set_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    data.set(keys[0], args[0], px=int(args[1]))
    return 1


SET: Operation[None] = Operation(
    name="set",
    lua="redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1",
    memory=_set_memory,
    parse=lambda reply: None,
    writeback=True,
    replay_args=_remaining_ttl,
)


def _delete_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    return data.delete(keys[0])


DELETE: Operation[bool] = Operation(
    name="delete",
    lua="return redis.call('DEL', KEYS[1])",
    memory=_delete_memory,
    parse=bool,
    writeback=True,
)


def _probe_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    return 1


# The recovery probe writes, not just PINGs: a full (OOM), misconfigured (MISCONF) or
# replica-short (NOREPLICAS) Redis answers PING while it refuses every write.
WRITE_PROBE: Operation[bool] = Operation(
    name="store.probe",
    lua="redis.call('SET', KEYS[1], '1', 'PX', 1000) return 1",
    memory=_probe_memory,
    parse=bool,
)

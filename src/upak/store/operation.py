"""Operations: atomic state changes, each one round trip, with an in-memory twin.

An `Operation` holds both halves of its contract side by side: the Lua script Redis runs and
the Python function the memory twin runs. Both return the same Redis-shaped reply (ints,
bytes, None, lists), and one `parse` turns that reply into what the feature wants, so a
feature written against `Store` behaves the same on Redis, on memory, and across an outage.

Features define their operations next to their policy (`upak.features.*`) and never touch
Redis or catch its errors: the `FailoverStore` decides what each operation does while Redis
is away, from the flags declared here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from upak.store.memory import MemoryData

T = TypeVar("T")
Arg = str | bytes | int | float
Reply = Any
MemoryFn = Callable[["MemoryData", Sequence[str], Sequence[Arg]], Reply]


class Mode(enum.StrEnum):
    """Where state operations are served right now."""

    REDIS = "redis"
    MEMORY = "memory"


class Fallback(enum.Enum):
    """What an operation does while Redis is unreachable (the seed's fallback mode)."""

    MEMORY = "memory"  # served by the in-process twin: replay protection, sessions, limits
    BYPASS = "bypass"  # not served at all; the operation's `bypass` result: caching


class StoreError(Exception):
    """Redis answered, but not as the operation expects (wrong type, script error)."""


# Journaled operations by name: a journal kept outside process memory (the host tier's) names
# each call's operation, and whichever worker writes it back finds the code here.
_JOURNALED: dict[str, Operation[Any]] = {}


def _register_journaled(op: Operation[Any]) -> None:
    known = _JOURNALED.get(op.name)
    if known is not None and known.lua != op.lua:
        raise ValueError(
            f"two journaled operations are named {op.name!r}: a write-back could not tell "
            "them apart; give one another name"
        )
    _JOURNALED[op.name] = op


def journaled_operation(name: str) -> Operation[Any] | None:
    """The journaled operation called `name` in this process, if there is one."""
    return _JOURNALED.get(name)


def _identity(reply: Reply) -> Any:
    return reply


@dataclass(frozen=True, eq=False)
class Operation(Generic[T]):
    """One atomic state operation: a Lua script and its memory twin with the same semantics.

    `lua` sees KEYS and ARGV as Redis gives them (strings); `memory` gets the same keys and the
    arguments as the caller passed them. Every key an operation touches must be passed in
    `keys` (Redis Cluster routes by them, and a script's keys must share one hash slot).
    """

    name: str
    lua: str
    memory: MemoryFn
    parse: Callable[[Reply], T] = _identity
    fallback: Fallback = Fallback.MEMORY
    # The result when `fallback` is BYPASS; gets the call's args.
    bypass: Callable[[Sequence[Arg]], T] | None = None
    # Replay this call against Redis on recovery, so what memory accepted during the outage
    # outlives it (claims, sessions, revocations). Calls are replayed in the order they ran.
    writeback: bool = False
    # When the journal is full, these calls are dropped first: a touch only renews an idle
    # timeout, so losing one costs a user at most an earlier re-login.
    expendable: bool = False
    # Never dropped from the journal, whatever its size: a revocation that is lost would
    # bring a logged-out session back.
    precious: bool = False
    # Must survive a failover (logins, revocations, replay done-markers): with
    # REDIS_WAIT_REPLICAS set, answered only once replicas acknowledged it (WAIT), or after
    # it was repeated on the master Sentinel names now. Such a call must be idempotent.
    durable: bool = False
    # Rewrites a call's args for its replay, given the milliseconds since it ran (so a TTL
    # written back is the remaining TTL, not a fresh one). Returning None drops the call.
    replay_args: Callable[[Sequence[Arg], int], Sequence[Arg] | None] | None = None
    # Rewrites args for the memory twin during an outage (rate limits divided per host).
    fallback_args: Callable[[Sequence[Arg]], Sequence[Arg]] | None = None
    # After Redis answered, keep a bounded local copy the fallback can serve (sessions).
    remember: Callable[[MemoryData, Sequence[str], Sequence[Arg], Reply], None] | None = None

    # For a read: whether its memory reply is a miss that Redis may still answer. Under a
    # condition that refuses only writes (OOM), such a miss is asked of Redis, so a session
    # this process never saw is still found while Redis is full.
    read_through: Callable[[Reply], bool] | None = None

    def __post_init__(self) -> None:
        if self.fallback is Fallback.BYPASS and self.bypass is None:
            raise ValueError(f"operation {self.name}: a BYPASS fallback needs a bypass result")
        if self.writeback:
            _register_journaled(self)

    def __repr__(self) -> str:
        return f"Operation({self.name!r})"

"""Operations: atomic state changes, each one round trip, with an in-memory twin.

An `Operation` holds both halves of its contract side by side: the Lua script Redis runs and
the Python function the memory twin runs. Both return the same Redis-shaped reply (ints,
bytes, None, lists), and one `parse` turns that reply into what the feature wants, so a
feature written against `Store` behaves the same on Redis, on memory, and across an outage.

Each operation declares its arguments as one record (a NamedTuple, or a frozen dataclass):
callers build the record, the twin, `fallback_args`, `replay_args`, `bypass` and `remember`
read its fields by name, and the record's field order IS the script's ARGV order
(`Operation.argv`, derived here, once, for every backend and for the journal's bytes;
`Operation.record_of` rebuilds the record from them). An operation whose ARGV is not one
fixed row (a batch of decisions) gives its own `encode`/`decode` pair instead, so that
encoding too lives in one place; one whose calls the store may merge (the decisions of one
loop step, one script call) declares how in `batch` (`upak.store.batch.BatchCodec`).

Features define their operations next to their policy (`upak.features.*`) and never touch
Redis or catch its errors: the `FailoverStore` decides what each operation does while Redis
is away, from the flags declared here.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from upak.store.core import Arg, Mode, StoreError

if TYPE_CHECKING:
    from upak.store.batch import BatchCodec
    from upak.store.keyspace import MemoryData

__all__ = ["Arg", "Fallback", "Mode", "NoArgs", "Operation", "StoreError"]

A = TypeVar("A")  # an operation's argument record
T = TypeVar("T")  # what its parsed reply is
Reply = Any
MemoryFn = Callable[["MemoryData", Sequence[str], A], Reply]


class NoArgs(NamedTuple):
    """The record of an operation that takes no arguments (ARGV is empty)."""


NO_ARGS = NoArgs()


def _is_named_tuple(record_type: type[Any]) -> bool:
    return issubclass(record_type, tuple) and hasattr(record_type, "_fields")


def _row_encoder(record_type: type[Any]) -> Callable[[Any], Sequence[Arg]]:
    """ARGV from a record: its fields' values in declaration order.

    A NamedTuple record (the features' own) already is that sequence: no copy on the hot
    path. A dataclass record is read with one attrgetter (one C call)."""
    if _is_named_tuple(record_type):
        return _as_it_is
    if not dataclasses.is_dataclass(record_type):
        raise TypeError(
            f"{record_type!r} is neither a NamedTuple nor a dataclass: an operation's args "
            "are a record"
        )
    names = [f.name for f in dataclasses.fields(record_type)]
    if not names:
        return lambda record: ()
    if len(names) == 1:
        get = operator.attrgetter(names[0])
        return lambda record: (get(record),)
    return operator.attrgetter(*names)  # type: ignore[return-value]  # a tuple for 2+ names


def _as_it_is(record: Sequence[Arg]) -> Sequence[Arg]:
    return record


def _row_decoder(record_type: type[A]) -> Callable[[Sequence[Arg]], A]:
    # The journal keeps each ARGV item's type (int, float, str, bytes), so the record comes
    # back exactly as the caller built it.
    if _is_named_tuple(record_type):
        return record_type._make  # type: ignore[attr-defined,no-any-return]
    return lambda argv: record_type(*argv)


class Fallback(enum.Enum):
    """What an operation does while Redis is unreachable (the seed's fallback mode)."""

    MEMORY = "memory"  # served by the in-process twin: replay protection, sessions, limits
    BYPASS = "bypass"  # not served at all; the operation's `bypass` result
    # Served by the twin in the host tier while the host's outage lasts, when that tier is the
    # whole service's (one host: every process that could invalidate an entry writes there);
    # bypassed like BYPASS otherwise (process memory, several hosts, a busy tier): caching.
    HOST = "host"


# Journaled operations by name: a journal kept outside process memory (the host tier's) names
# each call's operation, and whichever worker writes it back finds the code here.
_JOURNALED: dict[str, Operation[Any, Any]] = {}


def _register_journaled(op: Operation[Any, Any]) -> None:
    known = _JOURNALED.get(op.name)
    if known is not None and known.lua != op.lua:
        raise ValueError(
            f"two journaled operations are named {op.name!r}: a write-back could not tell "
            "them apart; give one another name"
        )
    _JOURNALED[op.name] = op


def journaled_operation(name: str) -> Operation[Any, Any] | None:
    """The journaled operation called `name` in this process, if there is one."""
    return _JOURNALED.get(name)


def _identity(reply: Reply) -> Any:
    return reply


@dataclass(frozen=True, eq=False)
class Operation(Generic[A, T]):
    """One atomic state operation: a Lua script and its memory twin with the same semantics.

    `lua` sees KEYS and ARGV as Redis gives them (strings; ARGV is `argv(record)`); `memory`
    gets the same keys and the record itself. Every key an operation touches must be passed
    in `keys` (Redis Cluster routes by them, and a script's keys must share one hash slot):
    either the key itself, or, for keys the script finds in the data (the sessions an index
    lists), their common prefix at a position listed in `families`. The contract suite runs
    every script with a guard that fails a call touching any other key, on every topology
    (tests/store/key_guard.py).
    """

    name: str
    lua: str
    # The argument record's type: a NamedTuple (or a frozen dataclass) whose field order is
    # the ARGV order.
    args: type[A]
    memory: MemoryFn[A]
    parse: Callable[[Reply], T] = _identity
    # Positions in `keys` (0-based) that are a family's prefix, not a key: the script touches
    # `keys[i] .. suffix` (inside the prefix's hash tag, so on the same Cluster slot).
    families: tuple[int, ...] = ()
    # A batch's own ARGV encoding, instead of the record's fields in order; both or neither.
    encode: Callable[[A], Sequence[Arg]] | None = None
    decode: Callable[[Sequence[Arg]], A] | None = None
    # Calls of this operation made in one loop step may be merged into one call (and one
    # call split by Cluster slot): the store's batcher does it (`upak.store.batch`).
    batch: BatchCodec[A] | None = None
    fallback: Fallback = Fallback.MEMORY
    # The result when `fallback` is BYPASS (or HOST and not served); gets the call's record.
    bypass: Callable[[A], T] | None = None
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
    # Rewrites a call's record for its replay, given the milliseconds since it ran (so a TTL
    # written back is the remaining TTL, not a fresh one). Returning None drops the call.
    replay_args: Callable[[A, int], A | None] | None = None
    # Rewrites the record for the memory twin during an outage (rate limits divided per host).
    fallback_args: Callable[[A], A] | None = None
    # After Redis answered, keep a bounded local copy the fallback can serve (sessions).
    remember: Callable[[MemoryData, Sequence[str], A, Reply], None] | None = None

    # For a read: whether its memory reply is a miss that Redis may still answer. Under a
    # condition that refuses only writes (OOM), such a miss is asked of Redis, so a session
    # this process never saw is still found while Redis is full.
    read_through: Callable[[Reply], bool] | None = None

    # Derived in __post_init__ from `encode`/`decode` or the record's fields:
    # the script's ARGV for a record (what Redis and the journal get), and the record back.
    argv: Callable[[A], Sequence[Arg]] = field(init=False, repr=False)
    record_of: Callable[[Sequence[Arg]], A] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.fallback is not Fallback.MEMORY and self.bypass is None:
            raise ValueError(
                f"operation {self.name}: a {self.fallback.name} fallback needs a bypass result"
            )
        if (self.encode is None) != (self.decode is None):
            raise ValueError(f"operation {self.name}: give both `encode` and `decode`, or neither")
        encode = self.encode or _row_encoder(self.args)
        decode = self.decode or _row_decoder(self.args)
        # Bound once: `argv` runs on every call, so it is the encoder itself, no dispatch.
        object.__setattr__(self, "argv", encode)
        object.__setattr__(self, "record_of", decode)
        if self.writeback:
            _register_journaled(self)

    def __repr__(self) -> str:
        return f"Operation({self.name!r})"

"""The Store contract every backend implements: RedisStore, MemoryStore, FailoverStore."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from upak.store.operation import NO_ARGS, Arg, Mode, Operation
from upak.store.primitives import CLAIM_ONCE, DELETE, GET, SET, Expiring

if TYPE_CHECKING:
    from upak.store.keyspace import MemoryData

A = TypeVar("A")
T = TypeVar("T")


class Store(ABC):
    """Atomic state operations. Implemented by RedisStore, MemoryStore and FailoverStore."""

    @property
    @abstractmethod
    def mode(self) -> Mode: ...

    @abstractmethod
    async def run(self, op: Operation[A, T], keys: Sequence[str], args: A) -> T:
        """Run `op` atomically, in one round trip, and return its parsed reply. `args` is the
        op's record (`op.args`; `NO_ARGS` for an operation that takes none)."""

    def submit(self, op: Operation[A, T], keys: Sequence[str], args: A) -> Awaitable[T]:
        """`run` as an awaitable to await once: a store that batches (FailoverStore) hands
        back the batch's future itself, with no coroutine per call."""
        return self.run(op, keys, args)

    @abstractmethod
    async def ping(self) -> float | None:
        """Round-trip latency to Redis in seconds; None when Redis is not in use."""

    def on_recovery(self, callback: Callable[[MemoryData], Awaitable[None]]) -> None:
        """Have `callback` run, given the fallback's memory, each time the store is back on
        Redis after an outage (a feature checks what it kept for the next one). A store
        without a fallback never recovers, so by default this does nothing."""

    async def start(self) -> None:
        """Begin background work (health checks). Idempotent."""

    async def close(self) -> None:
        """Stop background work and release connections."""

    # --- the primitives every feature may use (upak.store.primitives) ---

    async def claim_once(self, key: str, ttl_ms: int, value: Arg = "1") -> bool:
        """Set `key` for `ttl_ms` if nobody holds it. True for the first caller only."""
        return await self.run(CLAIM_ONCE, [key], Expiring(value, ttl_ms))

    async def get(self, key: str) -> bytes | None:
        return await self.run(GET, [key], NO_ARGS)

    async def set(self, key: str, value: Arg, ttl_ms: int) -> None:
        await self.run(SET, [key], Expiring(value, ttl_ms))

    async def delete(self, key: str) -> bool:
        """Remove `key`. True when it existed."""
        return await self.run(DELETE, [key], NO_ARGS)

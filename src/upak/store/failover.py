"""FailoverStore: Redis first, process memory when Redis is away, and back by itself.

The one failover mechanism for every feature (ARCHITECTURE.md, principle 1):

* A connection error or timeout on a call serves that same call from the fallback, so the
  caller never sees the outage. The breaker opens at once: later calls go straight to memory
  and nobody waits on a dead or hung Redis.
* What the fallback does is the operation's own declaration (`Operation.fallback`): the seed's
  replay protection, sessions and rate limits run on the memory twin; caching is bypassed.
* A heartbeat notices an outage even with no traffic; while Redis is away one probe retries
  with capped backoff.
* Calls the memory twin accepted that must outlive the outage (`Operation.writeback`) are
  journaled and replayed against Redis, in order, before the mode switches back, so a webhook
  claimed during the outage is still a replay afterwards and nobody is logged out by recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from upak.store.base import Store
from upak.store.memory import MemoryStore
from upak.store.operation import Arg, Fallback, Mode, Operation, StoreError
from upak.store.redis import UNAVAILABLE, RedisStore

T = TypeVar("T")
log = logging.getLogger("upak.store")

DEGRADED_MEANING = (
    "replay protection and sessions work per process, rate limiting is per process "
    "(less accurate), caching is off"
)


@dataclass
class FailoverStats:
    """What the app may read about the store: mode, last switch, last error, counters."""

    mode: Mode = Mode.REDIS
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    latency: float | None = None
    fallback_calls: int = 0
    bypassed_calls: int = 0
    switches_to_memory: int = 0
    switches_to_redis: int = 0
    written_back: int = 0
    writeback_dropped: int = 0
    pending_writeback: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": str(self.mode),
            "since": self.since,
            "last_error": self.last_error,
            "latency_ms": None if self.latency is None else round(self.latency * 1000, 3),
            "fallback_calls": self.fallback_calls,
            "bypassed_calls": self.bypassed_calls,
            "switches_to_memory": self.switches_to_memory,
            "switches_to_redis": self.switches_to_redis,
            "written_back": self.written_back,
            "writeback_dropped": self.writeback_dropped,
            "pending_writeback": self.pending_writeback,
        }


@dataclass(frozen=True)
class _Journaled:
    op: Operation[Any]
    keys: Sequence[str]
    args: Sequence[Arg]
    at_ms: int


class FailoverStore(Store):
    """A Store that serves from Redis while it can and from memory while it cannot."""

    def __init__(
        self,
        redis: RedisStore | None,
        memory: MemoryStore,
        *,
        target: str = "redis",
        secrets: Sequence[str] = (),
        health_interval: float = 0.25,
        backoff_min: float = 0.05,
        backoff_max: float = 1.0,
        journal_max: int = 1_000_000,
        writeback_batch: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.memory = memory
        self.target = target
        self._secrets = [s for s in secrets if s]
        self.health_interval = health_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.journal_max = journal_max
        self.writeback_batch = writeback_batch
        self._clock = clock
        self._journal: deque[_Journaled] = deque()
        self._watcher: asyncio.Task[None] | None = None
        self.stats = FailoverStats(mode=Mode.REDIS if redis else Mode.MEMORY)
        self._mode = self.stats.mode

    @property
    def mode(self) -> Mode:
        return self._mode

    # --- the hot path ---

    async def run(self, op: Operation[T], keys: Sequence[str], args: Sequence[Arg] = ()) -> T:
        if self._mode is Mode.REDIS and self.redis is not None:
            try:
                reply = await self.redis.run_raw(op, keys, args)
            except UNAVAILABLE as exc:
                self._trip(exc)
            else:
                if op.remember is not None:
                    op.remember(self.memory.data, keys, args, reply)
                return op.parse(reply)
        return self._serve_from_fallback(op, keys, args)

    def _serve_from_fallback(self, op: Operation[T], keys: Sequence[str], args: Sequence[Arg]) -> T:
        self.stats.fallback_calls += 1
        if op.fallback is Fallback.BYPASS:
            self.stats.bypassed_calls += 1
            assert op.bypass is not None
            return op.bypass(args)
        memory_args = op.fallback_args(args) if op.fallback_args is not None else args
        reply = self.memory.execute(op, keys, memory_args)
        if op.writeback:
            self._journal_call(op, keys, args)
        return op.parse(reply)

    def _journal_call(self, op: Operation[Any], keys: Sequence[str], args: Sequence[Arg]) -> None:
        if len(self._journal) >= self.journal_max:
            # Past the cap the oldest entry goes: a bounded process beats an OOM kill.
            self._journal.popleft()
            self.stats.writeback_dropped += 1
        self._journal.append(_Journaled(op, tuple(keys), tuple(args), self._now_ms()))
        self.stats.pending_writeback = len(self._journal)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- switching ---

    def _redact(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _trip(self, exc: BaseException) -> None:
        self.stats.last_error = self._redact(exc)
        if self._mode is Mode.MEMORY:
            return
        self._mode = self.stats.mode = Mode.MEMORY
        self.stats.since = self._clock()
        self.stats.switches_to_memory += 1
        self.stats.latency = None
        log.warning(
            "Redis at %s is unreachable (%s): serving from process memory until it returns; %s",
            self.target,
            self.stats.last_error,
            DEGRADED_MEANING,
        )

    def _recover(self) -> None:
        self._mode = self.stats.mode = Mode.REDIS
        self.stats.since = self._clock()
        self.stats.switches_to_redis += 1
        # Memory held the outage's state; Redis has it all now (the journal was replayed),
        # and a stale copy here must not answer during the next outage.
        self.memory.data.clear()
        log.warning(
            "Redis at %s is back: serving from Redis again (%d calls written back)",
            self.target,
            self.stats.written_back,
        )

    async def _write_back(self) -> None:
        """Replay the journal against Redis in order; raises if Redis fails again."""
        assert self.redis is not None
        while self._journal:
            batch = [self._journal[i] for i in range(min(self.writeback_batch, len(self._journal)))]
            now = self._now_ms()
            calls = []
            for entry in batch:
                args = entry.args
                if entry.op.replay_args is not None:
                    args = entry.op.replay_args(args, now - entry.at_ms)
                calls.append(
                    None if args is None else self.redis.run_raw(entry.op, entry.keys, args)
                )
            results = await asyncio.gather(
                *(c for c in calls if c is not None), return_exceptions=True
            )
            outcomes = iter(results)
            for entry, call in zip(batch, calls, strict=True):
                outcome = None if call is None else next(outcomes)
                if isinstance(outcome, UNAVAILABLE):
                    self.stats.pending_writeback = len(self._journal)
                    raise outcome
                self._journal.popleft()
                if isinstance(outcome, BaseException):
                    self.stats.writeback_dropped += 1
                    log.error("write-back of %s failed and was dropped: %s", entry.op.name, outcome)
                elif call is not None:
                    self.stats.written_back += 1
            self.stats.pending_writeback = len(self._journal)

    # --- background: heartbeat while up, probe while down ---

    async def start(self) -> None:
        if self.redis is None or self._watcher is not None:
            if self.redis is None:
                log.warning(
                    "No Redis configured: serving from process memory; %s", DEGRADED_MEANING
                )
            return
        try:
            self.stats.latency = await self.redis.ping()
            log.info("Store: Redis at %s (%.1f ms)", self.target, self.stats.latency * 1000)
        except UNAVAILABLE as exc:
            self._trip(exc)
        except StoreError as exc:
            self._trip(exc)
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="upak-redis")

    async def _watch(self) -> None:
        assert self.redis is not None
        backoff = self.backoff_min
        while True:
            if self._mode is Mode.REDIS:
                await asyncio.sleep(self.health_interval)
                try:
                    self.stats.latency = await self.redis.ping()
                except (*UNAVAILABLE, StoreError) as exc:
                    self._trip(exc)
                    backoff = self.backoff_min
                continue
            await asyncio.sleep(backoff)
            try:
                self.stats.latency = await self.redis.ping()
                await self.redis.reset_connections()
                await self._write_back()
            except (*UNAVAILABLE, StoreError) as exc:
                self.stats.last_error = self._redact(exc)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            # No await between the last journal check and the switch: nothing slips between.
            if not self._journal:
                self._recover()

    async def ping(self) -> float | None:
        if self._mode is Mode.REDIS and self.redis is not None:
            try:
                self.stats.latency = await self.redis.ping()
            except UNAVAILABLE as exc:
                self._trip(exc)
                return None
            return self.stats.latency
        return None

    async def close(self) -> None:
        if self._watcher is not None:
            # One cancel is not always enough: a cancellation that lands while a probe's own
            # deadline fires, or inside redis-py's disconnect, can be absorbed, and the loop
            # would run on. Insist until the task has ended.
            while not self._watcher.done():
                self._watcher.cancel()
                await asyncio.wait({self._watcher}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError):
                self._watcher.result()
            self._watcher = None
        if self.redis is not None:
            await self.redis.close()

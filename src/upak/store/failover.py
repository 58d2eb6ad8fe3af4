"""FailoverStore: Redis first, the fallback when Redis is away, and back by itself.

The one failover mechanism for every feature (ARCHITECTURE.md, principle 1):

* A server condition on a call (a connection error, a timeout, or a reply such as OOM, BUSY,
  LOADING or READONLY: `upak.store.conditions`) serves that same call from the fallback, so
  the caller never sees it. The breaker opens at once: later calls go straight to memory and
  nobody waits on a dead, hung or full Redis. Under a condition that refuses only writes
  (OOM, MISCONF, NOREPLICAS), a read that memory misses (`Operation.read_through`) still asks
  Redis. A programming error (WRONGTYPE, cross-slot) is no outage: it stays a StoreError.
* What the fallback does is the operation's own declaration (`Operation.fallback`): the seed's
  replay protection, sessions and rate limits run on the memory twin; caching runs on the host
  tier of a one-host service (`Fallback.HOST`) and is bypassed otherwise.
* A heartbeat notices an outage even with no traffic; while Redis is away one probe (a PING
  and a write, so a full Redis is not taken for a healthy one) retries with capped backoff.
  Hysteresis: a store that tripped again soon after its last recovery stays on memory for a
  hold that doubles with each such flap, so a Redis that answers, fails and answers again
  cannot switch the service dozens of times a second.
* Calls the memory twin accepted that must outlive the outage (`Operation.writeback`) are
  journaled and replayed against Redis, in order, before the mode switches back, so a webhook
  claimed during the outage is still a replay afterwards and nobody is logged out by recovery.
* Memory is kept across a recovery: the session mirror and the outage's own state are what
  the next outage needs (two short outages in a row must not log anybody out).
* The workers of one host degrade as one. The fallback (`MemoryStore`, or the host tier that
  all of a host's workers share) holds the outage itself: a worker that trips marks its
  partition down there, and every other worker reads that mark on its next call (an mmap
  read) and follows, so no worker serves from Redis while another serves the same session
  from the tier. The journal lives there too, and one worker at a time (an flock) writes it
  back; the partition goes back up only when the journal is empty and the hold has passed,
  checked and set under the tier's lock, and every worker follows again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import redis.exceptions as rex

from upak.store.base import Store
from upak.store.batch import StepBatch, fail
from upak.store.conditions import Condition, condition_of, refuses_writes_only
from upak.store.journal import Entry, Journal, Outage
from upak.store.memory import NOT_SERVED, MemoryData, MemoryStore
from upak.store.operation import NO_ARGS, Fallback, Mode, Operation
from upak.store.primitives import WRITE_PROBE
from upak.store.redis import RedisStore

A = TypeVar("A")
T = TypeVar("T")
log = logging.getLogger("upak.store")

_DEGRADED_MEANING = (
    "replay protection, sessions and rate limits work per host (every worker of this host "
    "shares the fallback; per process when it runs alone), rate limits are divided by "
    "RATE_LIMIT_FALLBACK_DIVISOR (the number of hosts), caching is {caching}"
)


def degraded_meaning(memory: MemoryStore) -> str:
    """What the outage means for `memory`'s service, for the log line an outage starts."""
    caching = "per host (the host tier; this host is the whole service)" if memory.caches else "off"
    return _DEGRADED_MEANING.format(caching=caching)


@dataclass
class FailoverStats:
    """What the app may read about the store: mode, last switch, last error, counters."""

    mode: Mode = Mode.REDIS
    since: float = field(default_factory=time.time)
    # Why the store is on memory (a `Condition`), None while on Redis.
    condition: str | None = None
    last_error: str | None = None
    latency: float | None = None
    fallback_calls: int = 0
    bypassed_calls: int = 0
    # Cache calls the host tier served during an outage (`Fallback.HOST`).
    host_cached_calls: int = 0
    switches_to_memory: int = 0
    switches_to_redis: int = 0
    # Of the switches to memory, those that followed another worker of the host.
    followed_host: int = 0
    fallback: str = "process"  # "host": the tier the host's workers share
    written_back: int = 0
    replay_dropped: int = 0  # write-backs Redis refused as a programming error
    read_through_calls: int = 0
    hold_seconds: float = 0.0  # the hysteresis hold of the current outage
    # (pending, dropped by the journal's cap), read from the fallback when asked.
    journal: Callable[[], tuple[int, int]] = field(default=lambda: (0, 0), repr=False)

    @property
    def pending_writeback(self) -> int:
        return self.journal()[0]

    @property
    def writeback_dropped(self) -> int:
        return self.replay_dropped + self.journal()[1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": str(self.mode),
            "since": self.since,
            "condition": self.condition,
            "last_error": self.last_error,
            "latency_ms": None if self.latency is None else round(self.latency * 1000, 3),
            "fallback_calls": self.fallback_calls,
            "bypassed_calls": self.bypassed_calls,
            "host_cached_calls": self.host_cached_calls,
            "switches_to_memory": self.switches_to_memory,
            "switches_to_redis": self.switches_to_redis,
            "followed_host": self.followed_host,
            "fallback": self.fallback,
            "written_back": self.written_back,
            "writeback_dropped": self.writeback_dropped,
            "pending_writeback": self.pending_writeback,
            "read_through_calls": self.read_through_calls,
            "hold_seconds": self.hold_seconds,
        }


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
        writeback_batch: int = 256,
        probe_key: str = "upak:store:probe",
        flap_window: float = 10.0,
        hold_min: float = 0.5,
        hold_max: float = 8.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.memory = memory
        self.target = target
        # Which of the fallback's outages and journals are this breaker's.
        self.partition = target
        self._secrets = [s for s in secrets if s]
        self.health_interval = health_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.writeback_batch = writeback_batch
        self.probe_key = probe_key
        # Hysteresis: a trip within `flap_window` s of the last recovery is a flap; each flap
        # in a row doubles the time spent on memory before the probe may switch back.
        self.flap_window = flap_window
        self.hold_min = hold_min
        self.hold_max = hold_max
        self._flaps = 0
        self._tripped_at = 0.0
        self._recovered_at: float | None = None
        self._clock = clock
        self._monotonic = monotonic
        self._wake = asyncio.Event()  # the host went back up: probe now, not at the backoff
        self._watcher: asyncio.Task[None] | None = None
        self._recovery_callbacks: list[Callable[[MemoryData], Awaitable[None]]] = []
        self._recovery_task: asyncio.Task[None] | None = None
        # The loop step's batcher (the Redis store's, so a step has one; shared by every
        # slot range's breaker on Cluster), and the tasks running merged calls.
        self._batch: StepBatch[Any] = redis.batch if redis is not None else StepBatch(_nothing)
        self._slot_of: Callable[[str], int | None] | None = (
            redis.slot_of if redis is not None and redis.slot_of("") is not None else None
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._merger = self._merge  # bound once: the batcher keys its handlers by it
        # The Redis store's coroutine-free send (a Cluster slot range's view has none).
        self._submit_raw: Callable[..., asyncio.Future[Any] | None] | None = getattr(
            redis, "submit_raw", None
        )
        self.stats = FailoverStats(
            mode=Mode.REDIS if redis else Mode.MEMORY,
            journal=lambda: (memory.pending(self.partition), memory.dropped(self.partition)),
            fallback=memory.shared_by,
        )
        self._mode = self.stats.mode

    @property
    def mode(self) -> Mode:
        return self._mode

    def on_recovery(self, callback: Callable[[MemoryData], Awaitable[None]]) -> None:
        self._recovery_callbacks.append(callback)

    # --- the hot path ---

    def submit(self, op: Operation[A, T], keys: Sequence[str], args: A) -> Awaitable[T]:
        """`run` as an awaitable. A mergeable operation's call (`op.batch`) joins the loop
        step's batch and its caller awaits the batch's future itself: no coroutine of its own
        per call; `_merge` runs the step's calls (this breaker's bookkeeping once per merged
        call) and settles each caller's future."""
        if op.batch is None:
            return self._run(op, keys, args)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._batch.defer(self._merger, (op, keys, args, future))
        return future

    async def run(self, op: Operation[A, T], keys: Sequence[str], args: A) -> T:
        if op.batch is not None:
            return await self.submit(op, keys, args)
        return await self._run(op, keys, args)

    async def _run(self, op: Operation[A, T], keys: Sequence[str], args: A) -> T:
        """One call on the ordinary path: Redis while it serves, else the fallback."""
        if self._mode is Mode.REDIS and self.redis is not None:
            if self.memory.outage(self.partition) is not None:
                self._follow_host()  # another worker of this host found Redis unable to serve
                return await self._serve_from_fallback(op, keys, args)
            try:
                reply = await self.redis.run_raw(op, keys, args)
            except Exception as exc:
                condition = condition_of(exc)
                if condition is None:
                    raise  # a programming error (StoreError): no outage, no fallback
                self._trip(exc, condition)
            else:
                if op.remember is not None:
                    self.memory.remember(op, keys, args, reply)
                return op.parse(reply)
        return await self._serve_from_fallback(op, keys, args)

    def _merge(self, calls: list[tuple[Operation[Any, Any], Sequence[str], Any, Any]]) -> None:
        """This step's calls of mergeable operations: each group of the same operation (and,
        on Cluster, the same slot) becomes one call, its reply split among the callers; a
        call alone runs as it is (`_start`)."""
        if len(calls) == 1:
            op, keys, args, future = calls[0]
            if not future.done():  # its caller gave up before its batch left: not run
                self._start(op, keys, args, None, [future])
            return
        groups: dict[Any, list[Any]] = {}
        slot_of = self._slot_of
        for call in calls:
            if call[3].done():
                continue  # its caller gave up before its batch left: it is not run
            # By operation (hashed by identity), and on Cluster by slot as well.
            group = call[0] if slot_of is None else (call[0], slot_of(call[1][0]))
            members = groups.get(group)
            if members is None:
                groups[group] = [call]
            else:
                members.append(call)
        for members in groups.values():
            op = members[0][0]
            codec = op.batch
            for start in range(0, len(members), codec.max_calls):
                chunk = members[start : start + codec.max_calls]
                if len(chunk) == 1:
                    self._start(op, chunk[0][1], chunk[0][2], None, [chunk[0][3]])
                    continue
                waiters = [call[3] for call in chunk]
                try:
                    keys, record = codec.merge([(call[1], call[2]) for call in chunk])
                except Exception as exc:
                    fail(waiters, exc)
                    continue
                self._start(op, keys, record, [call[2] for call in chunk], waiters)

    def _start(
        self,
        op: Operation[Any, Any],
        keys: Sequence[str],
        record: Any,
        records: list[Any] | None,
        waiters: list[asyncio.Future[Any]],
    ) -> None:
        """Run one (merged) call for `waiters` (`records`: the merged calls' own records, or
        None for a call alone). The common case, Redis serving and its connection open, goes
        out in this loop step's write with a callback on its reply: no task, no coroutine.
        Anything else runs the ordinary path in a task."""
        submit_raw = self._submit_raw
        if (
            submit_raw is not None
            and self._mode is Mode.REDIS
            and self.memory.outage(self.partition) is None
        ):
            raw = submit_raw(op, keys, record)
            if raw is not None:
                raw.add_done_callback(partial(self._landed, op, keys, record, records, waiters))
                return
        self._in_task(op, keys, record, records, waiters)

    def _in_task(
        self,
        op: Operation[Any, Any],
        keys: Sequence[str],
        record: Any,
        records: list[Any] | None,
        waiters: list[asyncio.Future[Any]],
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run_merged(op, keys, record, records, waiters)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _landed(
        self,
        op: Operation[Any, Any],
        keys: Sequence[str],
        record: Any,
        records: list[Any] | None,
        waiters: list[asyncio.Future[Any]],
        raw: asyncio.Future[Any],
    ) -> None:
        """The reply of a call `_start` sent: as `_run` would have handled it."""
        if raw.cancelled():  # the connection's reader was cancelled (the store closing)
            fail(waiters, asyncio.CancelledError())
            return
        exc = raw.exception()
        if exc is None:
            reply = raw.result()
            if op.remember is not None:
                self.memory.remember(op, keys, record, reply)
            self._settle(op, records, waiters, reply)
            return
        if isinstance(exc, rex.NoScriptError):
            # The script never ran: the ordinary path sends it again (and EVALs it).
            self._in_task(op, keys, record, records, waiters)
            return
        assert self.redis is not None
        exc = self.redis.failed(exc)
        condition = condition_of(exc)
        if condition is None:
            fail(waiters, exc)  # a programming error (StoreError): no outage, no fallback
            return
        self._trip(exc, condition)
        self._in_task(op, keys, record, records, waiters)  # now on the fallback

    def _settle(
        self,
        op: Operation[Any, Any],
        records: list[Any] | None,
        waiters: list[asyncio.Future[Any]],
        reply: Any,
    ) -> None:
        try:
            parsed = op.parse(reply)
        except Exception as exc:
            fail(waiters, exc)
            return
        self._hand_out(op, records, waiters, parsed)

    @staticmethod
    def _hand_out(
        op: Operation[Any, Any],
        records: list[Any] | None,
        waiters: list[asyncio.Future[Any]],
        parsed: Any,
    ) -> None:
        """Each waiter its part of a (merged) call's parsed reply, the whole of it for a call
        alone (`records` None); a reply that does not split fails them all."""
        try:
            if records is None:
                parts = [parsed]
            else:
                codec = op.batch
                assert codec is not None
                parts = codec.split(records, parsed)
        except Exception as exc:
            fail(waiters, exc)
            return
        for waiter, part in zip(waiters, parts, strict=True):
            if not waiter.done():  # its caller may have given up: the others' stand
                waiter.set_result(part)

    async def _run_merged(
        self,
        op: Operation[Any, Any],
        keys: Sequence[str],
        record: Any,
        records: list[Any] | None,
        waiters: list[asyncio.Future[Any]],
    ) -> None:
        """One (merged) call on the ordinary path (Redis, or the fallback as one call
        would); each caller gets its part, or its own copy of the error. A caller that gave
        up meanwhile only loses its part: the call is not cancelled for the others."""
        try:
            reply = await self._run(op, keys, record)
        except BaseException as exc:
            fail(waiters, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._hand_out(op, records, waiters, reply)

    async def _serve_from_fallback(self, op: Operation[A, T], keys: Sequence[str], args: A) -> T:
        self.stats.fallback_calls += 1
        if op.fallback is not Fallback.MEMORY:
            if op.fallback is Fallback.HOST:
                reply = self.memory.execute_cached(op, keys, args, self.partition)
                if reply is not NOT_SERVED:
                    self.stats.host_cached_calls += 1
                    return op.parse(reply)
            self.stats.bypassed_calls += 1
            assert op.bypass is not None
            return op.bypass(args)
        memory_args = op.fallback_args(args) if op.fallback_args is not None else args
        entry = None
        if op.writeback:
            entry = Entry(op, tuple(keys), args, self._now_ms(), self.partition)
        reply = self.memory.execute(op, keys, memory_args, entry)
        if op.read_through is not None and op.read_through(reply) and self._reads_served():
            reply = await self._read_through(op, keys, args, reply)
        if self.redis is not None and self.memory.outage(self.partition) is None:
            # The host went back up while this worker was still on the fallback (this call
            # may have been journaled just after): write back and follow at once.
            self._wake.set()
        return op.parse(reply)

    def _reads_served(self) -> bool:
        return self.redis is not None and refuses_writes_only(self.stats.condition)

    async def _read_through(
        self, op: Operation[A, Any], keys: Sequence[str], args: A, missed: Any
    ) -> Any:
        """A memory miss asked of a Redis that refuses only writes; memory's answer stands
        if Redis cannot give one either."""
        assert self.redis is not None
        try:
            reply = await self.redis.run_raw(op, keys, args)
        except Exception as exc:
            if condition_of(exc) is None:
                raise
            return missed
        self.stats.read_through_calls += 1
        if op.remember is not None:
            self.memory.remember(op, keys, args, reply)
        return reply

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- switching ---

    def _redact(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _trip(self, exc: BaseException, condition: Condition | None = None) -> None:
        condition = condition or _probe_condition(exc)
        self.stats.last_error = self._redact(exc)
        if self._mode is Mode.MEMORY:
            if self.stats.condition != condition:
                self.stats.condition = str(condition)
            if self.memory.outage(self.partition) is None:  # a probe failed after the host
                self.memory.mark_down(self.partition, Outage(str(condition), self._monotonic()))
            return
        now = self._monotonic()
        flapping = self._recovered_at is not None and now - self._recovered_at < self.flap_window
        self._flaps = self._flaps + 1 if flapping else 0
        self.stats.hold_seconds = (
            min(self.hold_min * 2 ** (self._flaps - 1), self.hold_max) if self._flaps else 0.0
        )
        # The host's workers degrade as one: they read this on their next call and follow.
        self.memory.mark_down(self.partition, Outage(str(condition), now + self.stats.hold_seconds))
        self._switch_to_memory(str(condition))
        log.warning(
            "Redis at %s cannot serve (%s: %s): serving from the fallback until it can; %s",
            self.target,
            condition,
            self.stats.last_error,
            degraded_meaning(self.memory),
        )

    def _follow_host(self) -> None:
        outage = self.memory.outage(self.partition)
        condition = outage.condition if outage else str(Condition.UNREACHABLE)
        self.stats.last_error = f"another worker of this host found Redis {condition}"
        self.stats.followed_host += 1
        self._switch_to_memory(condition)
        log.warning(
            "Redis at %s: another worker of this host found it %s; following it onto the fallback",
            self.target,
            condition,
        )

    def _switch_to_memory(self, condition: str) -> None:
        self._mode = self.stats.mode = Mode.MEMORY
        self.stats.condition = condition
        self.stats.since = self._clock()
        self.stats.switches_to_memory += 1
        self.stats.latency = None

    def _held(self) -> float:
        """Seconds the host's hysteresis hold still keeps this partition on the fallback."""
        outage = self.memory.outage(self.partition)
        return 0.0 if outage is None else max(0.0, outage.hold_until - self._monotonic())

    def _recover(self) -> None:
        self._mode = self.stats.mode = Mode.REDIS
        self.stats.condition = None
        self.stats.since = self._clock()
        self.stats.switches_to_redis += 1
        self._recovered_at = self._monotonic()
        # Memory stays as it is: Redis has the outage's writes now (the journal was
        # replayed), and the mirror is what the next outage serves sessions from.
        log.warning(
            "Redis at %s is back: serving from Redis again (%d calls written back)",
            self.target,
            self.stats.written_back,
        )
        if self._recovery_callbacks and self._recovery_task is None:
            self._recovery_task = asyncio.get_running_loop().create_task(
                self._after_recovery(), name="upak-redis-recovered"
            )

    async def _after_recovery(self) -> None:
        try:
            for callback in self._recovery_callbacks:
                try:
                    await callback(self.memory.data)
                except Exception:  # one feature's check must not stop the others
                    log.exception("a check after Redis recovered failed")
        finally:
            self._recovery_task = None

    async def _write_back(self) -> None:
        """Replay the journals this worker may write back, in order; raises if Redis fails
        again. The host's journal is written by one worker at a time (`MemoryStore.writer`)."""
        with self.memory.writer(self.partition) as journals:
            for journal in journals:
                await self._replay_journal(journal)

    async def _replay_journal(self, journal: Journal) -> None:
        """Replay batch after batch and clear each as it lands. A writer killed between the
        two leaves its batch in the journal, and the next writer replays it again: every
        journaled operation is idempotent (`Operation.durable` asks the same)."""
        assert self.redis is not None
        while batch := journal.pending(self.partition, self.writeback_batch):
            now = self._now_ms()
            calls, replayed = [], []
            for entry in batch:
                args: Any = entry.args  # None: replay_args dropped it
                if entry.op.replay_args is not None:
                    args = entry.op.replay_args(entry.args, now - entry.at_ms)
                replayed.append(args)
                calls.append(
                    None if args is None else self.redis.run_raw(entry.op, entry.keys, args)
                )
            results = await asyncio.gather(
                *(c for c in calls if c is not None), return_exceptions=True
            )
            outcomes = iter(results)
            landed = None  # the last entry replayed, in order, before any condition
            try:
                for entry, call, args in zip(batch, calls, replayed, strict=True):
                    outcome = None if call is None else next(outcomes)
                    if isinstance(outcome, Exception) and condition_of(outcome) is not None:
                        raise outcome
                    landed = entry.seq
                    if isinstance(outcome, BaseException):
                        self.stats.replay_dropped += 1
                        log.error(
                            "write-back of %s failed and was dropped: %s", entry.op.name, outcome
                        )
                    elif call is not None:
                        self.stats.written_back += 1
                        if entry.op.remember is not None:
                            # Redis's answer to the replay is the truth memory keeps: a
                            # session whose create was refused (revoked elsewhere) is
                            # forgotten here.
                            self.memory.remember(entry.op, entry.keys, args, outcome)
            finally:
                if landed is not None:
                    journal.done(self.partition, landed)

    # --- background: heartbeat while up, probe while down ---

    async def start(self) -> None:
        if self.redis is None or self._watcher is not None:
            if self.redis is None:
                log.warning(
                    "No Redis configured: serving from process memory; %s",
                    degraded_meaning(self.memory),
                )
            return
        await self.redis.start()
        try:
            self.stats.latency = await self.redis.ping()
            log.info("Store: Redis at %s (%.1f ms)", self.target, self.stats.latency * 1000)
        except Exception as exc:
            self._trip(exc, _probe_condition(exc))
        else:
            if self._mode is Mode.MEMORY:
                pass  # tripped before start (a test, or a caller that knew): nothing to join
            elif self.memory.outage(self.partition) is not None:
                self._follow_host()  # the host is degraded: join it, whatever this PING saw
            elif self.memory.pending(self.partition):
                # Calls of an earlier outage (a worker that died before writing them back)
                # are still owed to Redis: nobody may serve from Redis before they land.
                self._trip(RuntimeError("an earlier outage's calls are still owed to Redis"))
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="upak-redis")

    async def _watch(self) -> None:
        assert self.redis is not None
        backoff = self.backoff_min
        while True:
            if self._mode is Mode.REDIS:
                await asyncio.sleep(self.health_interval)
                try:
                    self.stats.latency = await self.redis.ping()
                except Exception as exc:
                    self._trip(exc, _probe_condition(exc))
                    backoff = self.backoff_min
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(backoff, self._held()))
            try:
                self.stats.latency = await self.redis.ping()
                await self.redis.reset_connections()
                await self.redis.run_raw(WRITE_PROBE, [self.probe_key], NO_ARGS)
                await self._write_back()
            except Exception as exc:
                self.stats.last_error = self._redact(exc)
                self.stats.condition = str(_probe_condition(exc))
                backoff = min(backoff * 2, self.backoff_max)
                continue
            backoff = self.backoff_min  # Redis answers: what remains is the host's hold
            # Checked and set in one step (no await): no journaled call slips between.
            if self.memory.mark_up(self.partition, self._monotonic()):
                self._recover()

    async def ping(self) -> float | None:
        if self._mode is Mode.REDIS and self.redis is not None:
            try:
                self.stats.latency = await self.redis.ping()
            except Exception as exc:
                self._trip(exc, _probe_condition(exc))
                return None
            return self.stats.latency
        return None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()  # their callers are cancelled with them (upak.store.batch)
        if self._recovery_task is not None:
            self._recovery_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery_task
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


def _nothing(items: list[Any]) -> None:
    """A store without Redis sends nothing: its batcher only merges (`FailoverStore._merge`)."""


def _probe_condition(exc: BaseException) -> Condition:
    # A PING or probe that fails in any way means Redis is not serving us; an error reply
    # that names no condition (say, NOPERM on the probe key) still is one for the probe.
    return condition_of(exc) or Condition.UNREACHABLE

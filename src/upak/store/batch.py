"""The store's one batcher: the calls of one event-loop step leave together.

A `StepBatch` collects what callers submit during one event-loop step and hands all of it
over once, at the end of that step (one `call_soon` per step, none per call). The RedisStore
owns the request path's only one, and every FailoverStore over it (one per slot range on
Cluster) shares it:

* first the deferred handlers run: each FailoverStore merges the step's calls of an
  operation that declares a `BatchCodec` (the rate-limit decisions) into one call per
  operation (and Cluster slot), run once on the ordinary path, so the breaker's and the
  fallback's bookkeeping happen once per merged call; a call alone in its step runs as it
  is. The caller awaits its future directly (`Store.submit`: no coroutine per call), and
  while Redis serves the call goes into this step's write with a callback on its reply;
* then the RedisStore's `send` packs every call of the step and writes them with one
  `write` (standalone, Sentinel), or as one pipeline per Cluster node. The Wire under it
  writes what it is given, with no batching of its own.

One cancellation rule, for every call:

* a caller that gives up (its future is cancelled) before its step's batch leaves is dropped
  from the batch: its call is never sent, and no other call of the batch changes;
* a caller that gives up after its call left only loses its reply: the call stands (Redis
  runs it), and every other caller of the batch gets its own reply, never one twice (a
  future already done is skipped);
* when the batch's sender is itself cancelled (the store closing), every caller still
  waiting is cancelled; any other failure reaches each waiter as its own copy of the error.

A `BatchCodec` is an operation's merge/split pair: `merge` makes one record (and its keys) of
several calls' records, `split` cuts the merged reply into each call's reply, shaped exactly
as that call alone would have got it. `parts`/`join` do the reverse for a call whose keys
span Cluster slots: the ClusterFailoverStore sends each slot's part to that slot's breaker and
joins the replies. Replies here are as the operation's `parse` returns them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import redis.exceptions as rex

A = TypeVar("A")  # an operation's argument record
I = TypeVar("I")  # an item of a batch  # noqa: E741
Reply = Any

__all__ = ["BatchCodec", "Part", "StepBatch", "fail", "fresh_error", "settle"]


class Part(NamedTuple, Generic[A]):
    """One key group's part of a call: which of the call's keys (by position), and the
    keys and record of the call that does that part alone."""

    indexes: list[int]
    keys: list[str]
    record: A


@dataclass(frozen=True, slots=True)
class BatchCodec(Generic[A]):
    """How calls of one operation merge into one call, and one call splits by key group.

    `merge(calls)`: the keys and record of one call doing `calls` ((keys, record) pairs) in
    order. `split(records, reply)`: the merged call's reply cut into each call's own reply.
    `parts(keys, record, group)`: a call whose keys fall into several groups (`group(key)`:
    the Cluster slot) as one `Part` per group, or None when its keys share one;
    `join(record, parts, replies)` makes the whole call's reply of its parts' replies (both
    as the operation's `parse` returns them).
    """

    merge: Callable[[Sequence[tuple[Sequence[str], A]]], tuple[list[str], A]]
    split: Callable[[Sequence[A], Reply], list[Reply]]
    parts: Callable[[Sequence[str], A, Callable[[str], Hashable]], list[Part[A]] | None]
    join: Callable[[A, Sequence[Part[A]], Sequence[Reply]], Reply]
    max_calls: int = 128  # calls merged into one, at most (a script's run blocks Redis)


class StepBatch(Generic[I]):
    """Items submitted during one loop step, handed over together when the step ends.

    `add` queues an item for the owner's `send`. `defer` queues one for another handler
    (the FailoverStore merging an operation's calls): deferred handlers run first, each
    once with its items of the step, then `send` with the step's items."""

    __slots__ = ("_deferred", "_items", "_loop", "_scheduled", "_send")

    def __init__(self, send: Callable[[list[I]], None]) -> None:
        self._send = send
        self._items: list[I] = []
        self._deferred: dict[Callable[[list[Any]], None], list[Any]] = {}
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, item: I) -> None:
        self._items.append(item)
        if not self._scheduled:
            self._schedule()

    def defer(self, handler: Callable[[list[Any]], None], item: Any) -> None:
        queue = self._deferred.get(handler)
        if queue is None:
            self._deferred[handler] = [item]
        else:
            queue.append(item)
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self._run)

    def _run(self) -> None:
        if self._deferred:
            # Still scheduled meanwhile: what a handler adds leaves with this step's items.
            deferred, self._deferred = self._deferred, {}
            for handler, queued in deferred.items():
                handler(queued)
        self._scheduled = False
        if self._deferred:  # a handler deferred a call: it runs in the next step
            self._schedule()
        if self._items:
            items, self._items = self._items, []
            self._send(items)


def settle(future: asyncio.Future[Any], reply: Any) -> None:
    """`reply` (a result, or an exception instance) to one waiter, unless it gave up."""
    if future.done():
        return
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)


def fail(futures: Sequence[asyncio.Future[Any]], error: BaseException) -> None:
    """The batch failed as a whole: each waiter still waiting gets its own copy of `error`,
    or is cancelled if the sender was."""
    cancelled = isinstance(error, asyncio.CancelledError)
    for future in futures:
        if not future.done():
            if cancelled:
                future.cancel()
            else:
                future.set_exception(fresh_error(error))


def fresh_error(error: BaseException) -> BaseException:
    """A copy per waiter: one exception raised in many tasks would collect all their
    tracebacks."""
    try:
        return type(error)(*error.args)
    except TypeError:
        return rex.ConnectionError(str(error))

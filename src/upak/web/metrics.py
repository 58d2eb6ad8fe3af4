"""Prometheus metrics, correct for any number of worker processes.

Every metric is a prometheus_client Counter, Gauge or Histogram in the app's own registry
(tests build several apps side by side). Under `upak serve --workers N` the environment names
a PROMETHEUS_MULTIPROC_DIR (see `upak.cli`): each worker's values then live in its own files
there, and `/metrics`, whichever worker answers, adds up all of them, so counters do not jump
between scrapes. Without it (one process, tests) the registry renders itself.

The features keep their own counters (FailoverStats, CacheStats: plain ints on their hot
paths); `sync` copies what changed into the metric objects, at every scrape and once a second
in every worker (`start`), so a worker that answers no scrape still reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from upak.domain.availability import DatabaseAvailability
from upak.features.cache import Cache
from upak.store import ClusterFailoverStore, FailoverStore, Mode

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_INTERVAL = 1.0
# Milliseconds matter here: most routes answer in 1-20 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self, store: FailoverStore | ClusterFailoverStore) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        self._synced: list[tuple[Callable[[], float], Any, list[float]]] = []
        self._gauges: list[tuple[Callable[[], float], Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        r = self.registry

        self.http_requests = Counter(
            "upak_http_requests",
            "HTTP requests by route template, method, status class (2xx) and code (429)",
            ["route", "method", "status", "code"],
            registry=r,
        )
        self.http_latency = Histogram(
            "upak_http_request_duration_seconds",
            "Time from the request to the end of the response, by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        stats = store.stats
        # Per worker, so a gauge of the service is the worst (or the sum) over live workers.
        mode = Gauge(
            "upak_store_mode",
            "1 for the mode the store serves from (max over workers)",
            ["mode"],
            registry=r,
            multiprocess_mode="livemax",
        )
        for each in Mode:
            # The default argument binds this loop's mode; mypy cannot infer such a lambda.
            self._gauge(lambda each=each: 1.0 if stats.mode is each else 0.0, mode.labels(each))  # type: ignore[misc]
        for name, help_text, aggregate, read in (
            (
                "upak_store_mode_since_seconds",
                "Unix time of the last mode switch (the latest over workers)",
                "livemax",
                lambda: stats.since,
            ),
            (
                "upak_store_pending_writeback",
                "Outage calls waiting for Redis (summed over workers)",
                "livesum",
                lambda: stats.pending_writeback,
            ),
            (
                "upak_redis_latency_seconds",
                "Last heartbeat round trip, 0 before the first (max over workers)",
                "livemax",
                lambda: stats.latency or 0.0,
            ),
        ):
            # The modes above are Gauge's literals; mypy reads the tuple's items as str.
            self._gauge(read, Gauge(name, help_text, registry=r, multiprocess_mode=aggregate))  # type: ignore[arg-type]
        switches = Counter("upak_store_switches", "Mode switches", ["to"], registry=r)
        self._count(lambda: stats.switches_to_memory, switches.labels("memory"))
        self._count(lambda: stats.switches_to_redis, switches.labels("redis"))
        for name, help_text, read in (
            ("fallback_calls", "Calls served by the fallback", lambda: stats.fallback_calls),
            ("bypassed_calls", "Calls bypassed (caching off)", lambda: stats.bypassed_calls),
            (
                "host_cached_calls",
                "Cache calls served by the host tier during an outage",
                lambda: stats.host_cached_calls,
            ),
            ("written_back", "Outage calls replayed to Redis", lambda: stats.written_back),
            (
                "writeback_dropped",
                "Outage calls dropped: the journal was full",
                lambda: stats.writeback_dropped,
            ),
        ):
            self._count(read, Counter(f"upak_store_{name}", help_text, registry=r))

    # --- what the features count --------------------------------------------------------

    def _count(self, read: Callable[[], float], counter: Any) -> None:
        self._synced.append((read, counter, [0.0]))

    def _gauge(self, read: Callable[[], float], gauge: Any) -> None:
        self._gauges.append((read, gauge))

    def watch_cache(self, cache: Cache) -> None:
        stats = cache.stats
        for name, help_text in (
            ("hits", "Fresh cache hits"),
            ("stale_hits", "Stale entries served while one caller refreshes"),
            ("misses", "Cache misses (computed from the source)"),
            ("bypasses", "Reads that bypassed the cache: Redis away, caching off"),
            ("computes", "Source computations"),
            ("decode_errors", "Entries that failed to decode (served as misses)"),
            ("invalidations", "Tags invalidated"),
        ):
            counter = Counter(f"upak_cache_{name}", help_text, registry=self.registry)
            # The default argument binds this loop's name; mypy cannot infer such a lambda.
            self._count(lambda name=name: getattr(stats, name), counter)  # type: ignore[misc]
        waits = Counter(
            "upak_cache_singleflight_waits",
            "Misses that waited for another caller's computation instead of computing",
            ["via"],
            registry=self.registry,
        )
        self._count(lambda: stats.local_waits, waits.labels("process"))
        self._count(lambda: stats.lease_waits, waits.labels("lease"))

    def watch_database(self, availability: DatabaseAvailability) -> None:
        """`upak_database_up` follows the database breaker (upak.domain.availability), which
        real calls trip and its own background check closes: never a query of its own."""
        up = Gauge(
            "upak_database_up",
            "1 while the database answers, 0 while it is down or hung (min over workers)",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self._gauge(lambda: 0.0 if availability.down else 1.0, up)
        outages = Counter(
            "upak_database_outages",
            "Times the database was found down or hung (each answered 503 until it returned)",
            registry=self.registry,
        )
        self._count(lambda: availability.outages, outages)

    def sync(self) -> None:
        """Copy the features' counters into the metrics (counters only ever grow)."""
        for read, counter, last in self._synced:
            value = read()
            if value > last[0]:
                counter.inc(value - last[0])
            last[0] = value
        for read, gauge in self._gauges:
            gauge.set(read())

    # --- HTTP -----------------------------------------------------------------------------

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:
            method = method if method in _METHODS else "OTHER"  # clients choose the method
            children = (
                self.http_requests.labels(route, method, f"{status // 100}xx", str(status)),
                self.http_latency.labels(route, method),
            )
            self._http[key] = children
        children[0].inc()
        children[1].observe(seconds)

    # --- the worker's lifetime and the scrape ----------------------------------------------

    def start(self) -> None:
        self.sync()
        self._task = asyncio.get_running_loop().create_task(self._sync_every(SYNC_INTERVAL))

    async def _sync_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.sync()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sync()
        if self.multiprocess_dir:
            # This worker's live gauges leave the sums; its counters stay counted.
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    def render(self) -> bytes:
        self.sync()
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        forget_dead_workers(self.multiprocess_dir)
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone, path=self.multiprocess_dir)
        return generate_latest(everyone)


def forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that died without `stop` (killed, crashed: uvicorn
    starts another), so a dead worker's last mode or pending count does not linger."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1]) if path.stem.rsplit("_", 1)[1].isdigit() else 0
        if pid and not _alive(pid):
            with contextlib.suppress(FileNotFoundError):  # another worker got there first
                multiprocess.mark_process_dead(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True

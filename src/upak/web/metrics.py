"""Prometheus metrics, one registry per app (tests build several apps side by side)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from upak.features.cache import Cache
from upak.store import FailoverStore, Mode


class StoreCollector(Collector):
    """Reads the failover's own counters at scrape time: nothing to keep in sync."""

    def __init__(self, store: FailoverStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.store.stats
        mode = GaugeMetricFamily(
            "upak_store_mode", "1 for the mode the store serves from", labels=["mode"]
        )
        for each in Mode:
            mode.add_metric([str(each)], 1.0 if stats.mode is each else 0.0)
        yield mode
        yield GaugeMetricFamily(
            "upak_store_mode_since_seconds", "Unix time of the last mode switch", value=stats.since
        )
        switches = CounterMetricFamily("upak_store_switches", "Mode switches", labels=["to"])
        switches.add_metric(["memory"], stats.switches_to_memory)
        switches.add_metric(["redis"], stats.switches_to_redis)
        yield switches
        yield CounterMetricFamily(
            "upak_store_fallback_calls", "Calls served by the fallback", value=stats.fallback_calls
        )
        yield CounterMetricFamily(
            "upak_store_bypassed_calls", "Calls bypassed (caching off)", value=stats.bypassed_calls
        )
        yield CounterMetricFamily(
            "upak_store_written_back", "Outage calls replayed to Redis", value=stats.written_back
        )
        yield GaugeMetricFamily(
            "upak_store_pending_writeback",
            "Outage calls waiting for Redis",
            value=stats.pending_writeback,
        )
        if stats.latency is not None:
            yield GaugeMetricFamily(
                "upak_redis_latency_seconds", "Last heartbeat round trip", value=stats.latency
            )


class CacheCollector(Collector):
    """The cache's counters (hits, misses, bypasses, single-flight waits), read at scrape time."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self.cache.stats
        for name, help_text, value in (
            ("hits", "Fresh cache hits", stats.hits),
            ("stale_hits", "Stale entries served while one caller refreshes", stats.stale_hits),
            ("misses", "Cache misses (computed from the source)", stats.misses),
            ("bypasses", "Reads that bypassed the cache: Redis away, caching off", stats.bypasses),
            ("computes", "Source computations", stats.computes),
            (
                "decode_errors",
                "Entries that failed to decode (served as misses)",
                stats.decode_errors,
            ),
            ("invalidations", "Tags invalidated", stats.invalidations),
        ):
            yield CounterMetricFamily(f"upak_cache_{name}", help_text, value=value)
        waits = CounterMetricFamily(
            "upak_cache_singleflight_waits",
            "Misses that waited for another caller's computation instead of computing",
            labels=["via"],
        )
        waits.add_metric(["process"], stats.local_waits)
        waits.add_metric(["lease"], stats.lease_waits)
        yield waits


class Metrics:
    def __init__(self, store: FailoverStore) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(store))

"""State operations on Redis, in memory, or on Redis with a memory fallback."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from upak.config import Settings
from upak.store.base import Store
from upak.store.cluster_failover import ClusterFailoverStore, ClusterNodeView
from upak.store.failover import FailoverStats, FailoverStore
from upak.store.host import Budgets, HostStore, HostTier, default_root, tier_name
from upak.store.keys import KeySpace
from upak.store.memory import MemoryData, MemoryStore
from upak.store.operation import Arg, Fallback, Mode, Operation, StoreError
from upak.store.redis import RedisStore

__all__ = [
    "Arg",
    "ClusterFailoverStore",
    "FailoverStats",
    "FailoverStore",
    "Fallback",
    "KeySpace",
    "MemoryData",
    "MemoryStore",
    "Mode",
    "Operation",
    "RedisStore",
    "Store",
    "StoreError",
    "build_store",
]


def fallback_for(settings: Settings, clock: Callable[[], float] = time.time) -> MemoryStore:
    """Where the service goes while Redis is away. Several workers (UPAK_WORKERS > 1) or an
    explicit UPAK_FALLBACK_PATH: the host tier, shared by the host's workers. One process:
    its own memory, which nobody else needs to see."""
    if settings.upak_workers == 1 and settings.upak_fallback_path is None:
        return MemoryStore(clock=clock, max_keys=settings.memory_max_keys)
    root = Path(settings.upak_fallback_path) if settings.upak_fallback_path else default_root()
    budgets = Budgets(
        main=settings.fallback_max_bytes,
        ratelimit=settings.fallback_ratelimit_max_bytes,
        cache=settings.fallback_cache_max_bytes,
    )
    name = tier_name(settings.redis.redacted_url(), settings.redis_key_prefix)
    # One host is the whole service: the tier sees every invalidation, so it may cache.
    return HostStore(
        HostTier(root, name, budgets=budgets, clock=clock),
        caches=settings.fallback_divisor == 1,
    )


def build_store(
    settings: Settings, clock: Callable[[], float] = time.time
) -> FailoverStore | ClusterFailoverStore:
    """The store the service runs on: Redis from `settings`, the host tier or process memory as
    its fallback (`fallback_for`).
    On Redis Cluster, one breaker per master's slot range over one shared memory."""
    target = settings.redis
    memory = fallback_for(settings, clock)
    probe_key = KeySpace(settings.redis_key_prefix).key("store", "probe")

    def failover(redis: RedisStore | ClusterNodeView, where: str, probe: str) -> FailoverStore:
        return FailoverStore(
            redis,  # type: ignore[arg-type]  # a ClusterNodeView has RedisStore's surface
            memory,
            target=where,
            secrets=[target.password or ""],
            health_interval=settings.redis_health_interval,
            backoff_max=settings.redis_probe_backoff_max,
            probe_key=probe,
            clock=clock,
        )

    redis = RedisStore.from_settings(settings)
    if target.kind != "cluster":
        return failover(redis, target.redacted_url(), probe_key)
    return ClusterFailoverStore(
        redis,
        memory,
        lambda view: failover(
            view,
            f"{target.redacted_url()} slots {view.slots}",
            f"{probe_key}:{{{view.slots.hash_tag()}}}",
        ),
    )

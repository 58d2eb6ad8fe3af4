"""State operations on Redis, in memory, or on Redis with a memory fallback."""

from __future__ import annotations

import time
from collections.abc import Callable

from upak.config import Settings
from upak.store.base import Store
from upak.store.failover import FailoverStats, FailoverStore
from upak.store.keys import KeySpace
from upak.store.memory import MemoryData, MemoryStore
from upak.store.operation import Arg, Fallback, Mode, Operation, StoreError, StoreUnavailable
from upak.store.redis import RedisStore

__all__ = [
    "Arg",
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
    "StoreUnavailable",
    "build_store",
]


def build_store(settings: Settings, clock: Callable[[], float] = time.time) -> FailoverStore:
    """The store the service runs on: Redis from `settings`, process memory as its fallback."""
    target = settings.redis
    return FailoverStore(
        RedisStore.from_settings(settings),
        MemoryStore(clock=clock, max_keys=settings.memory_max_keys),
        target=target.redacted_url(),
        secrets=[target.password or ""],
        health_interval=settings.redis_health_interval,
        backoff_max=settings.redis_probe_backoff_max,
        probe_key=KeySpace(settings.redis_key_prefix).key("store", "probe"),
        clock=clock,
    )

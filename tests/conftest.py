"""Fixtures shared by the suite: real redis-server processes and settings that point at them."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.support.redis_servers import (
    INSTALL_HINT,
    REDIS_SERVER,
    RedisCluster,
    RedisServer,
    SentinelSet,
    redis_server,
    start_cluster,
    start_sentinel_set,
)
from upak.config import Settings, load_settings
from upak.store import FailoverStore, MemoryStore, Store, build_store
from upak.store.host import HostStore, HostTier, tier_name


def pytest_configure(config: pytest.Config) -> None:
    if REDIS_SERVER is None:
        pytest.exit(INSTALL_HINT, returncode=4)


@pytest.fixture(scope="session", autouse=True)
def _runtime_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Servers the suite starts without UPAK_FALLBACK_PATH put their host tier under the
    runtime directory: the suite's own, never the machine's /dev/shm."""
    saved = {name: os.environ.get(name) for name in ("XDG_RUNTIME_DIR", "RUNTIME_DIRECTORY")}
    os.environ.pop("RUNTIME_DIRECTORY", None)
    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("runtime"))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def make_settings(**overrides: Any) -> Settings:
    """Settings from explicit values only: no .env, no leaking from the developer's shell."""
    # Each app its own in-memory database unless a test names one (no ./upak.db left behind).
    overrides.setdefault("database_url", "sqlite+aiosqlite://")
    return load_settings(env_file=None, **overrides)


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for tests that only need a Redis; each test uses its own key prefix."""
    with redis_server() as server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that kill, pause or restart it."""
    with redis_server() as server:
        yield server


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_settings(shared_redis: RedisServer, key_prefix: str) -> Settings:
    return make_settings(redis_url=shared_redis.url, redis_key_prefix=key_prefix)


@pytest.fixture(scope="session")
def cluster() -> Iterator[RedisCluster]:
    """A local 3-master Redis Cluster, shared by the whole run."""
    group = start_cluster(3)
    yield group
    group.stop()


@pytest.fixture(scope="session")
def sentinel_set() -> Iterator[SentinelSet]:
    """A master, a replica and a sentinel, shared by the whole run."""
    group = start_sentinel_set()
    yield group
    group.stop()


@pytest.fixture(
    params=[
        "memory",
        "host",
        "redis",
        pytest.param("cluster", marks=pytest.mark.slow),
        pytest.param("sentinel", marks=pytest.mark.slow),
    ]
)
async def any_store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Store]:
    """The contract suite's subject: the memory twin, the host tier (the twin on the shared
    SQLite file), a real Redis, a Cluster, a Sentinel set.

    Every feature's operations run here, so a script that touches keys of two hash slots
    fails on the cluster run.
    """
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "host":
        tmp_path = request.getfixturevalue("tmp_path")
        host = HostStore(HostTier(tmp_path / "tier", tier_name("contract", key_prefix)))
        yield host
        await host.close()
        return
    fixture = {"redis": "shared_redis", "cluster": "cluster", "sentinel": "sentinel_set"}
    target = request.getfixturevalue(fixture[request.param])
    store = build_store(make_settings(redis_url=target.url, redis_key_prefix=key_prefix))
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def failover_store(fresh_redis: RedisServer) -> AsyncIterator[FailoverStore]:
    store = build_store(
        make_settings(
            redis_url=fresh_redis.url, redis_socket_timeout=0.2, redis_connect_timeout=0.2
        )
    )
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(scope="session")
def throwaway_postgres() -> Iterator[Any]:
    """A PostgreSQL cluster of the suite's own (initdb on a free port), for tests that stop
    or hang the database; each test takes a fresh database with `new_database()`."""
    from tests.support.postgres import INSTALL_HINT as PG_HINT
    from tests.support.postgres import postgres_bin, postgres_server

    if postgres_bin() is None:
        pytest.skip(PG_HINT)
    with postgres_server() as server:
        yield server

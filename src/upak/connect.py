"""Redis clients built from Settings: standalone, unix socket, TLS, Sentinel and Cluster.

One place knows how a `RedisTarget` becomes a client, so the service (asyncio) and the
operator CLI (blocking) connect the same way. Clients never retry on their own: the
FailoverStore decides what a failure means, and a retry loop would turn a hung Redis into a
hung request.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.retry
import redis.sentinel
from redis.asyncio.connection import RedisSSLContext
from redis.backoff import NoBackoff

from upak.config import RedisTarget, Settings


def _tls_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "ssl": True,
        "ssl_ca_certs": settings.redis_ssl_ca_certs,
        "ssl_certfile": settings.redis_ssl_certfile,
        "ssl_keyfile": settings.redis_ssl_keyfile,
        "ssl_cert_reqs": settings.redis_ssl_cert_reqs,
        "ssl_check_hostname": settings.redis_ssl_cert_reqs == "required",
    }


def connection_kwargs(
    settings: Settings,
    *,
    socket_timeout: float | None = None,
    connect_timeout: float | None = None,
) -> dict[str, Any]:
    """The keyword arguments every client of `settings.redis` shares."""
    target = settings.redis
    kwargs: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_timeout": socket_timeout or settings.redis_socket_timeout,
        "socket_connect_timeout": connect_timeout or settings.redis_connect_timeout,
        "client_name": "upak",
    }
    if target.tls:
        kwargs.update(_tls_kwargs(settings))
    return kwargs


@dataclass(frozen=True)
class _Flavour:
    """One of redis-py's two client families: the asyncio one and the blocking one."""

    redis: Any
    cluster: Any
    sentinel: Any
    retry: Any


_ASYNC = _Flavour(redis.asyncio, redis.asyncio.cluster, redis.asyncio.sentinel, redis.asyncio.retry)
_SYNC = _Flavour(redis, redis.cluster, redis.sentinel, redis.retry)


def _client(flavour: _Flavour, settings: Settings, kwargs: dict[str, Any], pooled: bool) -> Any:
    target = settings.redis
    no_retry = flavour.retry.Retry(NoBackoff(), 0)
    pool = {"max_connections": settings.redis_max_connections} if pooled else {}
    if target.kind == "cluster":
        nodes = [flavour.cluster.ClusterNode(h, p) for h, p in target.hosts]
        return flavour.cluster.RedisCluster(startup_nodes=nodes, retry=no_retry, **pool, **kwargs)
    if target.kind == "sentinel":
        sentinel = flavour.sentinel.Sentinel(
            list(target.hosts),
            sentinel_kwargs={
                "socket_timeout": kwargs["socket_timeout"],
                "socket_connect_timeout": kwargs["socket_connect_timeout"],
            },
            retry=no_retry,
            db=target.db,
            **kwargs,
        )
        return sentinel.master_for(target.service_name)
    location: dict[str, Any] = (
        {"unix_socket_path": target.path}
        if target.kind == "unix"
        else {"host": target.hosts[0][0], "port": target.hosts[0][1]}
    )
    return flavour.redis.Redis(db=target.db, retry=no_retry, **pool, **location, **kwargs)


def async_client(
    settings: Settings,
    *,
    socket_timeout: float | None = None,
    connect_timeout: float | None = None,
) -> Any:
    """An asyncio client for the service: Redis, a Sentinel master, or RedisCluster."""
    kwargs = connection_kwargs(
        settings, socket_timeout=socket_timeout, connect_timeout=connect_timeout
    )
    return _client(_ASYNC, settings, kwargs, pooled=True)


def sync_client(
    settings: Settings,
    *,
    socket_timeout: float | None = 5.0,
    connect_timeout: float | None = 3.0,
) -> Any:
    """A blocking client for the operator CLI (longer timeouts: a human is waiting)."""
    kwargs = connection_kwargs(
        settings, socket_timeout=socket_timeout, connect_timeout=connect_timeout
    )
    return _client(_SYNC, settings, kwargs, pooled=False)


@dataclass(frozen=True)
class WireTarget:
    """Where the connection goes and how it introduces itself (`upak.store.wire` opens it)."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket instead of host and port
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_name: str | None = "upak"
    tls: ssl.SSLContext | None = None
    socket_timeout: float = 0.5
    connect_timeout: float = 0.5
    # Sentinel: asked for the master's (host, port) on every connect, so a reconnect after a
    # failover finds the new master.
    locate: Callable[[], Awaitable[tuple[str, int]]] | None = field(default=None, repr=False)


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The client TLS context for rediss://, as redis-py would build it from the same settings."""
    tls = _tls_kwargs(settings)
    return RedisSSLContext(
        keyfile=tls["ssl_keyfile"],
        certfile=tls["ssl_certfile"],
        cert_reqs=tls["ssl_cert_reqs"],
        ca_certs=tls["ssl_ca_certs"],
        check_hostname=tls["ssl_check_hostname"],
    ).get()


def wire_target(settings: Settings, client: Any) -> WireTarget | None:
    """Where the store's multiplexed connection goes; None for Cluster, which routes each
    call by slot through redis-py. For Sentinel, `client` (from `async_client`) is asked for
    the current master on every connect."""
    target = settings.redis
    if target.kind == "cluster":
        return None
    locate = client.connection_pool.get_master_address if target.kind == "sentinel" else None
    host, port = target.hosts[0] if target.hosts else ("localhost", 6379)
    return WireTarget(
        host=host,
        port=port,
        path=target.path if target.kind == "unix" else None,
        db=target.db,
        username=target.username,
        password=target.password,
        tls=tls_context(settings) if target.tls else None,
        socket_timeout=settings.redis_socket_timeout,
        connect_timeout=settings.redis_connect_timeout,
        locate=locate,
    )


def describe(target: RedisTarget) -> str:
    """A short, password-free name of the target for log lines and CLI output."""
    return target.redacted_url()

"""Redis clients built from Settings: standalone, unix socket, TLS, Sentinel and Cluster.

One place knows how a `RedisTarget` becomes a client, so the service (asyncio) and the
operator CLI (blocking) connect the same way. Clients never retry on their own: the
FailoverStore decides what a failure means, and a retry loop would turn a hung Redis into a
hung request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
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

from upak.config import Settings


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
    # Sentinel: the new master's (host, port) each time a sentinel announces +switch-master.
    announcements: Callable[[], AsyncIterator[tuple[str, int]]] | None = field(
        default=None, repr=False
    )
    # Sentinel: whether a failover of the master is under way right now.
    failing_over: Callable[[], Awaitable[bool]] | None = field(default=None, repr=False)


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
    sentinel = target.kind == "sentinel"
    name = target.service_name or ""
    locate = client.connection_pool.get_master_address if sentinel else None
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
        announcements=_switch_announcements(name, client) if sentinel else None,
        failing_over=_failing_over(name, client) if sentinel else None,
    )


def _failing_over(service_name: str, client: Any) -> Callable[[], Awaitable[bool]]:
    """Whether a sentinel reports a failover of `service_name` under way."""

    async def ask() -> bool:
        for sentinel in client.connection_pool.sentinel_manager.sentinels:
            try:
                state = await sentinel.sentinel_master(service_name)
            except (redis.RedisError, OSError):
                continue  # the next sentinel may answer
            flags = state.get("flags", "")
            return "failover_in_progress" in (flags if isinstance(flags, str) else ",".join(flags))
        return False

    return ask


def _switch_announcements(
    service_name: str, client: Any
) -> Callable[[], AsyncIterator[tuple[str, int]]]:
    """Sentinel's `+switch-master` for `service_name`, from whichever sentinel answers.

    Every wait is bounded: a sentinel that stops answering is left after `get_message`'s
    one-second poll fails, and the next one in the list is tried half a second later."""

    async def announcements() -> AsyncIterator[tuple[str, int]]:
        sentinels = client.connection_pool.sentinel_manager.sentinels
        for sentinel in itertools.cycle(sentinels):
            pubsub = sentinel.pubsub()
            try:
                await pubsub.subscribe("+switch-master")
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    data = message["data"]
                    parts = (data.decode() if isinstance(data, bytes) else str(data)).split()
                    if len(parts) == 5 and parts[0] == service_name:
                        yield parts[3], int(parts[4])
            except (redis.RedisError, OSError):
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    return announcements

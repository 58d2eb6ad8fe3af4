"""What every operator command needs from a live server: clients, INFO, CONFIG, key counts.

The operator connects two ways. The *app* connection uses the service's own settings
(REDIS_* and .env): `check` and the audit's privilege probes see what the service sees. The
*ops* connection uses an ops ACL user when one is given (`--ops-user`, UPAK_OPS_USERNAME /
UPAK_OPS_PASSWORD), because a least-privilege app user may not run INFO, BGSAVE or CONFIG.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions as rex
import rich.filesize

from upak.config import Settings
from upak.connect import connection_kwargs, sync_client
from upak.ops.diagnose import OpsError, close_quietly, explain, is_disabled
from upak.store.keys import FEATURES, KeySpace

DEFAULT_SCAN_LIMIT = 100_000


@dataclass(frozen=True)
class Ops:
    """How the operator reaches the server; built once per command from the CLI options."""

    settings: Settings
    ops_username: str | None = None
    ops_password: str | None = field(default=None, repr=False)
    config_command: str = "CONFIG"
    timeout: float = 5.0

    @property
    def keyspace(self) -> KeySpace:
        return KeySpace(self.settings.redis_key_prefix)

    def ops_settings(self) -> Settings:
        """The settings with the ops user's credentials, when one was given."""
        if not self.ops_username and not self.ops_password:
            return self.settings
        copy = self.settings.model_copy()
        target = dataclasses.replace(
            self.settings.redis,
            username=self.ops_username or self.settings.redis.username,
            password=self.ops_password,
        )
        object.__setattr__(copy, "_redis_target", target)
        return copy

    def app_client(self) -> Any:
        return sync_client(self.settings, socket_timeout=self.timeout)

    def ops_client(self) -> Any:
        return sync_client(self.ops_settings(), socket_timeout=self.timeout)

    @contextlib.contextmanager
    def connected(self, *, ops: bool = True) -> Iterator[Any]:
        """A client that has answered PING; a failure becomes one diagnosed line."""
        settings = self.ops_settings() if ops else self.settings
        client = sync_client(settings, socket_timeout=self.timeout)
        try:
            try:
                client.ping()
            except (rex.RedisError, OSError) as exc:
                raise OpsError(explain(exc, settings)) from None
            yield client
        finally:
            close_quietly(client)

    def explain(self, exc: BaseException, *, ops: bool = True) -> str:
        return explain(exc, self.ops_settings() if ops else self.settings)


def node_clients(client: Any) -> list[tuple[str, Any]]:
    """(address, client) per server to inspect: each primary of a Cluster, else the one."""
    if hasattr(client, "get_primaries"):
        return [
            (f"{node.host}:{node.port}", client.get_redis_connection(node))
            for node in client.get_primaries()
        ]
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return [(str(kwargs["path"]), client)]
    if "host" in kwargs:
        return [(f"{kwargs['host']}:{kwargs['port']}", client)]
    return [("master", client)]  # a Sentinel master: its address is resolved per connection


def info(client: Any, section: str = "everything") -> dict[str, Any]:
    """INFO as a flat dict (one node)."""
    return dict(client.info(section))


def config_get(client: Any, pattern: str, command: str = "CONFIG") -> dict[str, str] | None:
    """CONFIG GET, or None when CONFIG is renamed, denied or missing (never raises for that)."""
    try:
        reply = client.execute_command(command, "GET", pattern)
    except rex.ResponseError as exc:
        if is_disabled(exc):
            return None
        raise
    if isinstance(reply, list):  # RESP2: a flat list of name, value pairs
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    return {_text(k): _text(v) for k, v in reply.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def server_mode(settings: Settings, server_info: dict[str, Any]) -> str:
    """standalone / sentinel / cluster, as the operator thinks of the deployment."""
    if settings.redis.kind == "sentinel":
        return "sentinel"
    mode = str(server_info.get("redis_mode", "standalone"))
    if server_info.get("cluster_enabled") in (1, "1"):
        return "cluster"
    return mode


def count_upak_keys(
    client: Any, keyspace: KeySpace, limit: int = DEFAULT_SCAN_LIMIT
) -> dict[str, Any]:
    """UPAK's keys by feature, with a SCAN bounded to `limit` keys so a big keyspace cannot
    stall the command (or the server: SCAN works in small steps). `complete` says whether
    the count covers every key."""
    counts = dict.fromkeys((*FEATURES, "other"), 0)
    seen = 0
    complete = True
    for _, node in node_clients(client):
        for key in node.scan_iter(match=keyspace.pattern(), count=1000):
            name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
            counts[keyspace.feature_of(name) or "other"] += 1
            seen += 1
            if seen >= limit:
                complete = False
                break
        if not complete:
            break
    return {"by_feature": counts, "total": seen, "complete": complete, "limit": limit}


def human_bytes(value: float) -> str:
    """Sizes as rich shows them (SI units: 1.5 MB); Redis's own `*_human` fields are binary."""
    return rich.filesize.decimal(int(value))


def hit_ratio(stats: dict[str, Any]) -> float | None:
    hits = int(stats.get("keyspace_hits", 0))
    misses = int(stats.get("keyspace_misses", 0))
    return hits / (hits + misses) if hits + misses else None


def human_duration(seconds: int) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def plain_connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection options of `settings` without any credentials (for the auth probe)."""
    kwargs = connection_kwargs(settings, socket_timeout=3.0, connect_timeout=3.0)
    kwargs.update(username=None, password=None, client_name=None)
    return kwargs

"""`upak redis monitor`: a live dashboard, refreshed every second until Ctrl-C.

Not the seed's `redis-cli monitor` (which echoes every command and halves throughput): one
INFO and one bounded SCAN per refresh. Rates and the hit ratio are over the last interval,
so they show what is happening now, not since the server started. Given `--app URL`, the
service's GET /health `store` field says whether UPAK runs on Redis or on its memory fallback.
While Redis is unreachable the dashboard stays up and says why.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions as rex
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from upak.ops.server import Ops, count_upak_keys, human_bytes, info, node_clients
from upak.store.keys import KeySpace

MONITOR_SCAN_LIMIT = 20_000

INTERRUPTED = 130  # exit status after Ctrl-C (128 + SIGINT)


@dataclass
class Sample:
    at: float
    ok: bool = True
    error: str = ""
    ops_per_sec: int = 0
    used_memory: int = 0
    maxmemory: int = 0
    policy: str = ""
    clients: int = 0
    hits: int = 0
    misses: int = 0
    evicted: int = 0
    expired: int = 0
    window_hit_ratio: float | None = None
    evicted_in_window: int = 0
    upak_keys: dict[str, Any] = field(default_factory=dict)
    app_store: str | None = None


def app_store_mode(url: str, timeout: float = 1.0) -> str:
    """The service's /health `store` field ("redis" / "memory"), or why it is unknown."""
    health = url.rstrip("/") + "/health"
    if not health.startswith(("http://", "https://")):
        return "unknown (--app needs an http:// or https:// URL)"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:  # noqa: S310
            body = json.loads(response.read(65536))
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read(65536))
        except ValueError:
            return f"unknown (HTTP {exc.code})"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"unreachable ({reason})"
    store = body.get("store") if isinstance(body, dict) else None
    return str(store) if store else "unknown (no `store` in /health)"


def take_sample(
    client: Any,
    keyspace: KeySpace,
    previous: Sample | None,
    *,
    app_url: str | None = None,
    scan_limit: int = MONITOR_SCAN_LIMIT,
    clock: Callable[[], float] = time.monotonic,
) -> Sample:
    sample = Sample(at=clock())
    if app_url:
        sample.app_store = app_store_mode(app_url)
    try:
        totals: dict[str, int] = {}
        for _, node in node_clients(client):
            fields = info(node, "everything")
            for name, key in (
                ("ops_per_sec", "instantaneous_ops_per_sec"),
                ("used_memory", "used_memory"),
                ("maxmemory", "maxmemory"),
                ("clients", "connected_clients"),
                ("hits", "keyspace_hits"),
                ("misses", "keyspace_misses"),
                ("evicted", "evicted_keys"),
                ("expired", "expired_keys"),
            ):
                totals[name] = totals.get(name, 0) + int(fields.get(key, 0))
            sample.policy = str(fields.get("maxmemory_policy", ""))
        for name, value in totals.items():
            setattr(sample, name, value)
        sample.upak_keys = count_upak_keys(client, keyspace, scan_limit)
    except (rex.RedisError, OSError) as exc:
        sample.ok = False
        sample.error = str(exc)
        return sample
    if previous is not None and previous.ok:
        hits = sample.hits - previous.hits
        misses = sample.misses - previous.misses
        sample.window_hit_ratio = hits / (hits + misses) if hits + misses > 0 else None
        sample.evicted_in_window = max(0, sample.evicted - previous.evicted)
    elif sample.hits + sample.misses:
        sample.window_hit_ratio = sample.hits / (sample.hits + sample.misses)
    return sample


def render_sample(sample: Sample, target: str, interval: float) -> Panel:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    title = f"upak redis monitor · {target} · {stamp}"
    subtitle = f"every {interval:g}s · Ctrl-C to stop"
    if not sample.ok:
        body: Any = f"[bold red]Redis unreachable:[/] {sample.error}"
        if sample.app_store:
            body += f"\nUPAK service store: {sample.app_store}"
        return Panel(body, title=title, title_align="left", subtitle=subtitle)
    stats = Table(show_header=False, box=None, pad_edge=False)
    stats.add_column("what", style="bold")
    stats.add_column("value", justify="right")
    stats.add_row("ops/s", f"{sample.ops_per_sec:,}")
    memory = human_bytes(sample.used_memory)
    if sample.maxmemory:
        percent = 100 * sample.used_memory / sample.maxmemory
        memory += f" / {human_bytes(sample.maxmemory)} ({percent:.1f}%)"
    else:
        memory += " (no maxmemory)"
    stats.add_row("memory", memory)
    stats.add_row("policy", sample.policy or "?")
    ratio = sample.window_hit_ratio
    stats.add_row("hit ratio", "n/a" if ratio is None else f"{ratio:.1%}")
    stats.add_row("clients", str(sample.clients))
    stats.add_row("evictions", f"{sample.evicted:,} (+{sample.evicted_in_window})")
    stats.add_row("expired", f"{sample.expired:,}")
    if sample.app_store is not None:
        style = "green" if sample.app_store == "redis" else "bold red"
        stats.add_row("UPAK store", f"[{style}]{sample.app_store}[/]")
    keys = Table(title="UPAK keys", box=None, pad_edge=False, title_justify="left")
    keys.add_column("feature", style="bold")
    keys.add_column("keys", justify="right")
    by_feature = sample.upak_keys.get("by_feature", {})
    for feature, count in by_feature.items():
        keys.add_row(feature, f"{count:,}")
    total = f"{sample.upak_keys.get('total', 0):,}"
    if not sample.upak_keys.get("complete", True):
        total += "+"
    keys.add_row("total", total, style="bold")
    grid = Table.grid(padding=(0, 6))
    grid.add_row(stats, keys)
    return Panel(Group(grid), title=title, title_align="left", subtitle=subtitle)


def run_monitor(
    ops: Ops,
    console: Console,
    *,
    app_url: str | None = None,
    interval: float = 1.0,
    count: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Refresh until Ctrl-C (130, the shell's code for SIGINT, as every command answers it)
    or `count` refreshes (0). The first connection must succeed."""
    target = ops.ops_settings().redis.redacted_url()
    with ops.connected() as client:
        previous: Sample | None = None
        shown = 0
        with Live(console=console, auto_refresh=False, transient=False) as live:
            try:
                while count is None or shown < count:
                    sample = take_sample(client, ops.keyspace, previous, app_url=app_url)
                    live.update(render_sample(sample, target, interval), refresh=True)
                    previous = sample if sample.ok else previous
                    shown += 1
                    if count is None or shown < count:
                        sleep(interval)
            except KeyboardInterrupt:
                # The dashboard is left as it was (Live ends cleanly), then 130 as documented.
                return INTERRUPTED
    return 0

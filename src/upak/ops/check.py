"""`upak redis check`: the seed's "checking that it works", as the service sees Redis.

PING → PONG; SET, GET and DEL of a unique test key under REDIS_KEY_PREFIX (so an app user
limited to the prefix can run it, and it never collides with anything); then the server's
version, mode, uptime and round-trip latency. A failure is one diagnosed line.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.exceptions as rex
from rich.console import Console
from rich.table import Table

from upak.ops.diagnose import OpsError, close_quietly
from upak.ops.server import Ops, human_duration, info, node_clients, server_mode

TEST_VALUE = "Hello UPAK"  # the seed's test value
PINGS = 5


@dataclass
class CheckReport:
    target: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    version: str = ""
    mode: str = ""
    uptime_seconds: int | None = None  # None: unknown (INFO denied to this user)
    latency_ms: float = 0.0
    ok: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_check(ops: Ops, clock: Callable[[], float] = time.perf_counter) -> CheckReport:
    """Run the checks with the app's credentials; raise OpsError on the first failure."""
    settings = ops.settings
    report = CheckReport(target=settings.redis.redacted_url())
    client = ops.app_client()
    step = "connect"
    try:
        step = "PING"
        rtts = []
        for _ in range(PINGS):
            start = clock()
            pong = client.ping()
            rtts.append((clock() - start) * 1000)
            if pong is not True:
                raise OpsError(f"PING at {settings.redis.address} answered {pong!r}, not PONG")
        report.latency_ms = round(statistics.median(rtts), 3)
        report.steps.append({"step": "PING", "ok": True, "detail": "PONG"})

        key = ops.keyspace.key("check", uuid.uuid4().hex)
        step = "SET"
        client.set(key, TEST_VALUE, ex=60)  # expires even if DEL never runs
        report.steps.append({"step": "SET", "ok": True, "detail": key})
        step = "GET"
        value = client.get(key)
        if value not in (TEST_VALUE, TEST_VALUE.encode()):
            raise OpsError(
                f"GET {key} returned {value!r} right after SET: a proxy or replica is answering "
                "(is REDIS_URL pointing at a read replica?)"
            )
        report.steps.append({"step": "GET", "ok": True, "detail": TEST_VALUE})
        step = "DEL"
        deleted = client.delete(key)
        report.steps.append({"step": "DEL", "ok": deleted == 1, "detail": f"{deleted} key"})

        step = "INFO server"
        server = _server_info(client)
        report.version = str(server.get("redis_version", "?"))
        report.mode = server_mode(settings, server)
        uptime = server.get("uptime_in_seconds")
        report.uptime_seconds = None if uptime is None else int(uptime)
        report.steps.append({"step": "INFO server", "ok": True, "detail": report.version})
    except OpsError:
        raise
    except (rex.RedisError, OSError) as exc:
        reason = ops.explain(exc, ops=False)
        raise OpsError(reason if step == "PING" else f"{step} failed: {reason}") from None
    finally:
        close_quietly(client)
    report.ok = all(s["ok"] for s in report.steps)
    return report


def _server_info(client: Any) -> dict[str, Any]:
    try:
        return info(node_clients(client)[0][1], "server")
    except rex.ResponseError as exc:
        if "no permissions" in str(exc).lower():
            # A least-privilege app user may not run INFO; the check itself still passed.
            return {"redis_version": "unknown (INFO denied for this user)"}
        raise


def render_check(report: CheckReport, console: Console) -> None:
    table = Table(title=f"upak redis check: {report.target}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("result")
    for s in report.steps:
        mark = "[green]ok[/]" if s["ok"] else "[red]FAILED[/]"
        table.add_row(s["step"], f"{mark}  {s['detail']}")
    table.add_row("version", report.version)
    table.add_row("mode", report.mode)
    uptime = report.uptime_seconds
    table.add_row("uptime", "unknown (INFO denied)" if uptime is None else human_duration(uptime))
    table.add_row("latency", f"{report.latency_ms:.2f} ms (median of {PINGS} PINGs)")
    console.print(table)

"""Shared by every bench script: a private redis-server, timing helpers, and result files.

Each script measures ours next to a peer in the same run and writes `bench/results/NAME.json`
(rows of metric, ours, peer, ratio) that `bench/report.py` turns into docs/BENCHMARKS.md.
Nothing in a report is typed by hand.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench scripts reuse the suite's redis-server launcher

from rates import alternating, measure_rate, meter  # noqa: E402  (re-exported)
from tests.support.redis_servers import RedisServer, redis_server  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# bench/run_all.py ends an overrunning script with SIGTERM: as SystemExit, it unwinds the
# script's `with redis_server()` and server blocks, so no redis-server or uvicorn is left on
# the 2 cores for the scripts after it.
signal.signal(signal.SIGTERM, _exit_on_sigterm)

__all__ = [
    "RedisServer",
    "Result",
    "Row",
    "alternating",
    "asgi_get",
    "fmt",
    "load_average",
    "machine",
    "measure_rate",
    "meter",
    "percentiles",
    "redis_server",
]


@dataclass
class Row:
    metric: str
    ours: float
    peer: float | None = None
    peer_name: str | None = None
    unit: str = "ops/s"
    higher_is_better: bool = True
    # False where the two figures are of different things (a memory answer next to a socket
    # timeout): both are reported, a ratio of them would be a number that means nothing.
    comparable: bool = True
    # How this figure was taken, where the metric's name does not say it all: concurrency,
    # key distribution, the peer's configuration. Shown beside the row in docs/BENCHMARKS.md.
    setup: str = ""

    @property
    def ratio(self) -> float | None:
        """How many times better ours is (>1 is better, whatever the unit's direction)."""
        if not self.comparable or self.peer in (None, 0) or self.ours == 0:
            return None
        return self.ours / self.peer if self.higher_is_better else self.peer / self.ours


@dataclass
class Result:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)
    # When the script started and the machine's load then: the report says it per section,
    # because the 2 cores are shared with other work and absolute figures move with it.
    started: float = field(default_factory=time.time)
    load_start: float = field(default_factory=lambda: load_average())

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        ratio = f"{row.ratio:,.2f}x" if row.ratio is not None else ""
        peer = f"{fmt(row.peer)} ({row.peer_name})" if row.peer is not None else ""
        print(f"  {row.metric:<58} {fmt(row.ours):>12} {row.unit:<6} {peer:>28} {ratio:>7}")
        return row

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        data = asdict(self)
        for raw, row in zip(data["rows"], self.rows, strict=True):
            raw["ratio"] = row.ratio
        data["machine"] = machine()
        data["run"] = {
            "script": f"bench/{self.name}.py",
            "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "load_start": self.load_start,
            "load_end": load_average(),
        }
        path.write_text(json.dumps(data, indent=2))
        print(f"wrote {path.relative_to(ROOT)}")
        return path


async def asgi_get(
    app: Any, path: str, query: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = ()
) -> int:
    """One GET straight into an ASGI app, no HTTP client in the measurement; the status."""
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"bench"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("bench", 80),
    }
    await app(scope, receive, send)
    return status


def fmt(value: float) -> str:
    """Figures with the precision they deserve: 0.042, 3.14, 12,345."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"


# --- callgrind: counters of a process run under valgrind --tool=callgrind ---


def callgrind_control(action: str, pid: int) -> None:
    """`callgrind_control --zero` or `--dump` for `pid`, bounded: a valgrind that stopped
    answering fails the bench instead of holding it."""
    subprocess.run(
        ["callgrind_control", f"--{action}", str(pid)], check=True, timeout=60, capture_output=True
    )


def callgrind_total(dump: Path) -> int:
    """The instructions a callgrind dump counted (its `summary:` line)."""
    found = re.search(r"^summary: (\d+)", dump.read_text(), re.M)
    if found is None:
        raise RuntimeError(f"{dump} holds no callgrind summary")
    return int(found.group(1))


# What a server logs for an exception nothing was designed for: uvicorn's answer to one that
# escaped the app, and asyncio's reports of one no task or callback handled.
_UNHANDLED = re.compile(
    r"Exception in ASGI application|exception was never retrieved|Exception in callback"
)


def unhandled_exceptions(log: str) -> int:
    """How many unhandled exceptions a service's log reports (goal 0 under any fault)."""
    return len(_UNHANDLED.findall(log))


def load_average() -> float:
    """The 1-minute load average (2 cores here: above 2, something else wanted the CPU too)."""
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, object]:
    try:
        redis_version = (
            subprocess.run(
                ["redis-server", "--version"], capture_output=True, text=True, check=False
            )
            .stdout.split()[2]
            .removeprefix("v=")
        )
    except (OSError, IndexError):
        redis_version = "unknown"
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "redis": redis_version,
        "platform": platform.platform(terse=True),
    }


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p99 of latencies in seconds, reported in milliseconds."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0}
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }

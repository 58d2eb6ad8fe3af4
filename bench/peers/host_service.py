"""The service bench/host_tier.py measures: `upak serve --workers N` on a private redis-server,
its host tier on tmpfs, and a Redis outage switched on and off by killing Redis.

`HostService.redis_away()` snapshots Redis (SAVE), kills it -9 and waits until every worker
says `memory` on /health; `redis_back()` starts it again from that snapshot and waits until
every worker says `redis`. The snapshot is what a persistent Redis would restart from: the
sessions the bench logged in with outlive each restart, so every Redis-up round serves the
same logged-in users as the first (an empty restart would log them out, which is the chaos
bench's subject, not this one's).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.redis_servers import RedisServer
from tests.support.service import QUICK_FAILOVER_ENV, Service, running_service

__all__ = ["QUICK_FAILOVER_ENV", "HostService", "pin_group", "pin_process", "served"]


def pin_process(pid: int, cpus: set[int] | None) -> None:
    """Every thread of `pid` onto `cpus` (threads and children started later inherit it)."""
    if cpus is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def pin_group(group: int, cpus: set[int] | None) -> int:
    """Every process of process group `group` onto `cpus`; how many processes were pinned.
    `upak serve` runs in a session of its own, so this is its supervisor and its workers."""
    if cpus is None:
        return 0
    pinned = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != group:  # field 5 of /proc/PID/stat, the process group
                continue
            pin_process(int(entry.name), cpus)
            pinned += 1
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited while we looked
    return pinned


def _health(url: str) -> dict[str, object] | None:
    """One /health answer on a fresh connection (so any worker may take it), or None."""
    with contextlib.suppress(httpx.HTTPError, ValueError):
        response = httpx.get(url + "/health", timeout=1.0)
        return response.json()
    return None


@dataclass
class HostService:
    service: Service
    redis: RedisServer
    workers: int
    load_cpus: set[int] | None = None
    worker_pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.service.url

    def discover_workers(self, within: float = 15.0) -> None:
        """Learn the worker pids from /health (each fresh connection lands on any worker)."""
        deadline = time.monotonic() + within
        while len(self.worker_pids) < self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(self.worker_pids)} of {self.workers} workers answered /health "
                    f"within {within} s"
                )
            answer = _health(self.url)
            if answer is not None:
                self.worker_pids.add(int(answer["worker"]))  # type: ignore[call-overload]

    def wait_all(self, mode: str, within: float) -> float:
        """Until every known worker has said `mode` on /health since this call began; the
        seconds that took. A worker that is replaced (a new pid) fails the wait: the bench
        would no longer measure the service it started."""
        started = time.monotonic()
        deadline = started + within
        confirmed: set[int] = set()
        seen: dict[int, object] = {}
        while confirmed != self.worker_pids:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the workers did not all reach {mode} within {within} s: last seen {seen}"
                )
            answer = _health(self.url)
            if answer is None:
                time.sleep(0.01)
                continue
            pid = int(answer["worker"])  # type: ignore[call-overload]
            if pid not in self.worker_pids:
                raise RuntimeError(f"worker {pid} is new: one of {self.worker_pids} was replaced")
            seen[pid] = answer["store"]
            if answer["store"] == mode:
                confirmed.add(pid)
            else:
                confirmed.discard(pid)
                time.sleep(0.01)
        return time.monotonic() - started

    def redis_away(self, within: float = 10.0) -> float:
        """Snapshot, kill -9, wait for every worker on its fallback; the seconds waited."""
        with self.redis.client() as client:
            client.save()
        self.redis.kill()
        return self.wait_all("memory", within)

    def redis_back(self, within: float = 20.0) -> float:
        """Start Redis from its snapshot, wait for every worker back on it (the write-back of
        the outage's journal is done by then); the seconds waited."""
        self.redis.start()
        assert self.redis.proc is not None
        pin_process(self.redis.proc.pid, self.load_cpus)
        return self.wait_all("redis", within)


@contextlib.contextmanager
def served(
    redis: RedisServer,
    env: dict[str, str],
    *,
    workers: int,
    server_cpus: set[int] | None,
    load_cpus: set[int] | None,
) -> Iterator[HostService]:
    """`upak serve --workers N` with `env` on `redis` (never the machine's default Redis),
    its processes on `server_cpus`."""
    with running_service({**env, "REDIS_URL": redis.url}, workers=workers, timeout=60) as service:
        if pin_group(service.proc.pid, server_cpus) < workers + 1:
            raise RuntimeError("could not pin the supervisor and every worker")
        host = HostService(service, redis, workers, load_cpus=load_cpus)
        host.discover_workers()
        yield host

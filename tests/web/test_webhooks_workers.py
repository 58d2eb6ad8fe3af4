"""Exactly once across processes: `upak serve --workers 2` on one Redis and one SQLite file.

Fifty concurrent copies of one delivery, spread by the kernel over two worker processes: one
claim wins (Redis), or, with Redis killed just before the burst, each process's memory gate
lets one through and the database's unique payment key turns the second into a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.support.redis_servers import RedisServer
from tests.support.service import Service, running_service
from tests.support.webhooks import (
    SECRET,
    YOOKASSA_IP,
    create_database,
    notification,
    read_state,
    signed_headers,
)
from upak.features.replay import ReplayGuard, ReplayWindows
from upak.store import KeySpace, MemoryStore

pytestmark = pytest.mark.slow

BURST = 50
PERIOD = timedelta(days=30)


@dataclass
class Server:
    service: Service
    db_path: str
    prefix: str
    worker_count: int

    @property
    def url(self) -> str:
        return self.service.url

    def log(self) -> str:
        return self.service.log()

    def workers(self) -> list[int]:
        """The pids of the `upak serve` process's children (its workers and helpers)."""
        children = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.service.proc.pid:
                        children.append(int(entry))
        return children

    def connections_per_worker(self) -> dict[int, int]:
        """Established HTTP connections each worker holds right now (from /proc)."""
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    if local_port == self.service.port and fields[3] == "01":
                        inodes.add(fields[9])
        counts = {}
        for pid in self.workers():
            held = 0
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(f"/proc/{pid}/fd/{fd}")
                        held += link.startswith("socket:[") and link[8:-1] in inodes
            counts[pid] = held
        return counts


@contextlib.contextmanager
def upak_serve(
    tmp_path: Path, redis: RedisServer, workers: int = 2, **env: str
) -> Iterator[Server]:
    """`upak serve --workers N` (tests/support/service.py) on `redis` and a SQLite file."""
    db_path = str(tmp_path / "upak.db")
    prefix = f"w{uuid.uuid4().hex[:8]}:"
    settings = {
        "REDIS_URL": redis.url,
        "REDIS_KEY_PREFIX": prefix,
        "REDIS_SOCKET_TIMEOUT": "0.2",
        "REDIS_CONNECT_TIMEOUT": "0.2",
        "DATABASE_URL": create_database(db_path),
        "WEBHOOK_SECRET": SECRET,
        "LOG_LEVEL": "INFO",
        **env,
    }
    with running_service(settings, workers=workers) as service:
        yield Server(service, db_path, prefix, workers)


async def burst(server: Server, path: str, body: bytes, headers: dict[str, str]):
    """BURST concurrent copies, each on its own connection; returns the responses and how
    many connections each worker held while they were open."""
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post(path, content=body, headers=headers) for _ in range(BURST))
        )
        spread = server.connections_per_worker()
    return responses, spread


def assert_exactly_once(server: Server, responses, spread: dict[int, int], started: float) -> None:
    statuses = [r.status_code for r in responses]
    unexpected = [r.text for r in responses if r.status_code not in (200, 409)]
    assert set(statuses) <= {200, 409}, unexpected
    results = [r.json()["status"] for r in responses if r.status_code == 200]
    assert results.count("processed") == 1, results
    assert set(results) <= {"processed", "duplicate"}
    # Several workers took part: each held some of the burst's connections (with 2, both;
    # with 4, the kernel may leave one idle). `upak serve`'s other child, multiprocessing's
    # resource tracker, holds none.
    serving = [n for n in spread.values() if n > 0]
    assert len(serving) >= min(server.worker_count, 3) and sum(serving) == BURST, spread
    payments, expires, plan = read_state(server.db_path)
    assert (payments, plan) == (1, "start")
    assert expires is not None
    low = datetime.fromtimestamp(started, UTC) + PERIOD - timedelta(seconds=2)
    assert low <= expires <= datetime.now(UTC) + PERIOD


async def test_fifty_signed_copies_over_two_workers_take_effect_once(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    with upak_serve(tmp_path, fresh_redis) as server:
        body = notification()
        headers = signed_headers(body, at=time.time())
        started = time.time()
        responses, spread = await burst(server, "/webhooks/upak", body, headers)
        assert_exactly_once(server, responses, spread, started)
        async with httpx.AsyncClient(base_url=server.url) as client:
            replay = await client.post("/webhooks/upak", content=body, headers=headers)
            stale = signed_headers(body, at=time.time() - 301, msg_id="msg_stale")
            late = await client.post("/webhooks/upak", content=body, headers=stale)
        assert (replay.status_code, replay.json()) == (200, {"status": "duplicate"})
        assert late.status_code == 401
        assert read_state(server.db_path)[0] == 1


async def test_fifty_yookassa_copies_over_two_workers_take_effect_once(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    with upak_serve(tmp_path, fresh_redis, TRUSTED_PROXIES="127.0.0.1") as server:
        body = notification()
        started = time.time()
        responses, spread = await burst(
            server, "/webhooks/yookassa", body, {"x-forwarded-for": YOOKASSA_IP}
        )
        assert_exactly_once(server, responses, spread, started)
        async with httpx.AsyncClient(base_url=server.url) as client:
            replay = await client.post(
                "/webhooks/yookassa", content=body, headers={"x-forwarded-for": YOOKASSA_IP}
            )
            forged = await client.post(
                "/webhooks/yookassa",
                content=notification(),
                headers={"x-forwarded-for": f"{YOOKASSA_IP}, 203.0.113.7"},
            )
        assert replay.json() == {"status": "duplicate"}
        assert forged.status_code == 403
        assert read_state(server.db_path)[0] == 1


async def test_with_redis_killed_before_the_burst_the_effect_is_still_once(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    # Four workers, the host: one replay gate in the host tier for all of them.
    with upak_serve(tmp_path, fresh_redis, 4, YOOKASSA_ALLOWED_IPS="127.0.0.1") as server:
        body = notification()
        headers = signed_headers(body, at=time.time())
        fresh_redis.kill()
        started = time.time()
        responses, spread = await burst(server, "/webhooks/upak", body, headers)
        assert_exactly_once(server, responses, spread, started)
        # The workers share one gate in the host tier: one copy passed it, so the database
        # key never had to stop a second (per-process gates each let one through).
        stopped = f"{headers['webhook-id']}': duplicate (the payment is recorded already)"
        assert stopped not in server.log()
        yookassa_body = notification()
        responses, spread = await burst(server, "/webhooks/yookassa", yookassa_body, {})
        assert [r.json()["status"] for r in responses if r.status_code == 200].count(
            "processed"
        ) == 1
        assert read_state(server.db_path)[0] == 2

        # Redis returns empty: the claims made in memory are written back to it.
        fresh_redis.restart(keep_data=False)
        gate = ReplayGuard(MemoryStore(), KeySpace(server.prefix), ReplayWindows(300, 3600))
        key = gate.key_for("upak", headers["webhook-id"])
        raw = fresh_redis.client()
        deadline = time.monotonic() + 20
        while raw.get(key) != b"d" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert raw.get(key) == b"d"
        async with httpx.AsyncClient(base_url=server.url) as client:
            replay = await client.post("/webhooks/upak", content=body, headers=headers)
        assert replay.json() == {"status": "duplicate"}
        assert read_state(server.db_path)[0] == 2

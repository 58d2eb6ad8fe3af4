"""Issue 12's Cluster check: `upak serve --workers 2` on 3 masters and 3 replicas, one master
killed -9 under load. Sessions used before the kill never get a 401, rate limits of clients
whose keys are on the healthy masters stay exact, each slot range switches at most once each
way (no flap, read from both workers' /health), and nothing answers 5xx."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis.crc import key_slot

from tests.support.redis_servers import RedisCluster, start_cluster
from tests.support.service import QUICK_FAILOVER_ENV, running_service

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
LIMIT = 50  # RATE_LIMIT_DEFAULT per minute
SENT = 80  # requests of each rate-limited client, across the kill


@pytest.fixture
def replicated_cluster() -> Iterator[RedisCluster]:
    group = start_cluster(3, replicas=1, node_timeout_ms=1000, full_coverage=False)
    yield group
    group.stop()


def master_port(spans: list[tuple[int, int, int]], tag: str) -> int:
    slot = key_slot(tag.encode())
    return next(port for start, end, port in spans if start <= slot <= end)


async def health_of_both(url: str, within: float = 10.0) -> dict[int, dict[str, Any]]:
    """/health details from each of the two workers (new connections land on either)."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while len(seen) < 2 and time.monotonic() < deadline:
            body = (await client.get(url + "/health", timeout=2)).json()
            seen[body["worker"]] = body
    assert len(seen) == 2, "did not hear from both workers"
    return seen


async def test_one_master_killed_under_load(replicated_cluster: RedisCluster) -> None:
    group = replicated_cluster
    spans = [
        (start, end, int(master[1]))
        for start, end, master, *_ in group.nodes[0].client().cluster("SLOTS")
    ]
    victim_port = spans[0][2]
    victim = next(n for n in group.nodes if n.port == victim_port)
    # Anonymous clients are limited by address: those whose tag is on a healthy master.
    addresses = [
        f"10.9.0.{n}" for n in range(1, 250) if master_port(spans, f"ip:10.9.0.{n}") != victim_port
    ][:3]
    env = {
        "REDIS_URL": group.url,
        **QUICK_FAILOVER_ENV,
        "RATE_LIMIT_DEFAULT": f"{LIMIT}/minute",
        "RATE_LIMIT_REGISTER": "100/minute",
        "RATE_LIMIT_LOGIN_IP": "100/minute",
        "TRUSTED_PROXIES": "127.0.0.1",
    }
    with running_service(env, workers=2, timeout=60) as service:
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=10) as http:
            cookies = []
            # Users 1-6: tags u1..u6 are in slots 4574, 8637, 12700, 379, 4442, 8505, so
            # every master (the victim too) holds some of these sessions.
            for n in range(6):
                email = f"c{n}@example.com"
                headers = {"X-Forwarded-For": f"10.8.0.{n + 1}"}
                http.cookies.clear()  # a login that carries another session replaces it
                r = await http.post(
                    "/auth/register", json={"email": email, "password": PASSWORD}, headers=headers
                )
                assert r.status_code == 201, r.text
                r = await http.post(
                    "/auth/login", json={"email": email, "password": PASSWORD}, headers=headers
                )
                assert r.status_code == 200, r.text
                cookies.append((r.cookies["upak_session"], headers["X-Forwarded-For"]))

            http.cookies.clear()  # each request names its own session

            async def me(session: tuple[str, str]) -> int:
                cookie, address = session
                headers = {"Cookie": f"upak_session={cookie}", "X-Forwarded-For": address}
                r = await http.get("/me", headers=headers)
                return r.status_code

            # Each session used on both workers before the kill (20 fresh connections each).
            for cookie in cookies:
                got = await asyncio.gather(*(me(c) for c in [cookie] * 20))
                assert set(got) == {200}, (got, service.log()[-3000:])
            session_statuses: list[int] = []
            admitted: dict[str, Counter[int]] = {a: Counter() for a in addresses}
            stop = asyncio.Event()

            async def sessions_load() -> None:
                while not stop.is_set():
                    session_statuses.extend(await asyncio.gather(*(me(c) for c in cookies)))
                    await asyncio.sleep(0.3)  # 6 sessions x ~25 requests: under the limit

            async def limited(address: str) -> None:
                for _ in range(SENT):
                    r = await http.get("/openapi.json", headers={"X-Forwarded-For": address})
                    admitted[address][r.status_code] += 1
                    await asyncio.sleep(0.05)

            load = [asyncio.create_task(limited(a)) for a in addresses]
            sessions = asyncio.create_task(sessions_load())
            await asyncio.sleep(1.0)
            victim.kill()
            killed_at = time.monotonic()

            def victim_range(body: dict[str, Any]) -> dict[str, Any]:
                return next(n for n in body["nodes"] if n["slots"].startswith(f"{spans[0][0]}-"))

            while time.monotonic() - killed_at < 25:
                both = await health_of_both(service.url)
                if all(victim_range(b)["switches_to_redis"] >= 1 for b in both.values()):
                    break
                await asyncio.sleep(0.2)
            back_after = time.monotonic() - killed_at
            await asyncio.gather(*load)
            await asyncio.sleep(0.5)
            stop.set()
            await sessions
            both = await health_of_both(service.url)
        log = service.log()

    assert "Traceback" not in log, log[-3000:]
    assert set(session_statuses) == {200}, Counter(session_statuses)
    for address, statuses in admitted.items():
        assert statuses == {200: LIMIT, 429: SENT - LIMIT}, (address, statuses)
    for worker, body in both.items():
        assert body["store"] == "redis", (worker, body)
        for node in body["nodes"]:
            if node is victim_range(body):
                assert (node["switches_to_memory"], node["switches_to_redis"]) == (1, 1), node
            else:
                assert node["switches_to_memory"] == 0 and node["fallback_calls"] == 0, node
    print(f"the dead master's range was back on Redis in both workers after {back_after:.2f} s")

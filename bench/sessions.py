"""Sessions: what the session check costs per request, and what a session costs in Redis.

1. `GET /me` with a session cookie, next to the same handler behind a route with no session
   check (`/bench/me-unchecked`: same user row, same response builder), on one uvicorn server
   (one worker) on a private redis-server, in one run; rounds alternate so drift hits both.
2. Redis memory per session (MEMORY USAGE of its keys, and INFO used_memory growth), next to
   the common "JSON blob under session:<token>" layout (fastapi-sessions/starlette-session
   style) holding the same fields.

Run: .venv/bin/python bench/sessions.py
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fastapi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Result, Row, alternating, asgi_get, meter, percentiles, redis_server
from rates import mean

PASSWORD = "bench password 1"
SESSIONS = 2000
CONCURRENCY = 16
SECONDS = 2.0
ROUNDS = 4  # paired rounds (bench/rates.py), the order reversed each round
HTTP_SETUP = (
    f"{CONCURRENCY} concurrent httpx requests from the bench process to 1 uvicorn worker, one "
    "user's session; both warmed 0.5 s, paired rounds in alternating order; peer: the same /me "
    "body from the cache, no session check, on an ordinary FastAPI route (/me is a hot route)"
)


def make_app(settings=None):  # type: ignore[no-untyped-def]
    """The uvicorn factory for the server under test: the real app plus the unchecked peer."""
    from upak.config import load_settings
    from upak.domain.accounts import get_user
    from upak.web.app import create_app
    from upak.web.http_cache import private_json
    from upak.web.routes.me import me_body

    app = create_app(settings or load_settings(env_file=None))

    @app.get("/bench/me-unchecked")
    async def me_unchecked(request: fastapi.Request, user_id: int):  # type: ignore[no-untyped-def]
        # /me exactly as the real route serves it (from the cache, same entry), minus the
        # session check: the difference between the two is what the check costs.
        services = request.app.state.services

        async def load():  # type: ignore[no-untyped-def]
            async with services.db() as db:
                return me_body(await get_user(db, user_id))

        return await private_json(request, services.cache, user_id, "me", load)

    return app


def start_server(redis_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/bench.db",
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_ENABLED": "false",
        "PYTHONPATH": f"{ROOT / 'bench'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "sessions:make_app"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env=env,
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/health", timeout=1)
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bench server did not start") from None
            time.sleep(0.1)


async def http_rates(url: str, result: Result) -> None:
    import httpx

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
        await client.post("/auth/register", json={"email": "b@x.io", "password": PASSWORD})
        reply = await client.post("/auth/login", json={"email": "b@x.io", "password": PASSWORD})
        user_id = reply.json()["id"]  # registration does not say (issue 13): login does
        assert (await client.get("/me")).status_code == 200
        latencies: dict[str, list[float]] = {"checked": [], "unchecked": []}

        async def timed(kind: str, path: str) -> None:
            started = time.perf_counter()
            response = await client.get(path)
            latencies[kind].append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code} {response.text}")

        unchecked = f"/bench/me-unchecked?user_id={user_id}"
        meters = {
            "unchecked": meter(lambda i: timed("unchecked", unchecked), CONCURRENCY),
            "checked": meter(lambda i: timed("checked", "/me"), CONCURRENCY),
        }
        for warm in meters.values():  # both warmed; their latencies are not counted
            await warm(0.5)
        latencies = {"checked": [], "unchecked": []}
        rates = await alternating(meters, seconds=SECONDS * ROUNDS, warmup=0)
    checked, unchecked_rate = mean(rates["checked"]), mean(rates["unchecked"])
    result.add(
        Row(
            "GET /me req/s, session checked (vs no session check)",
            checked,
            unchecked_rate,
            "same route, no check",
            unit="req/s",
            setup=HTTP_SETUP,
        )
    )
    for kind in ("checked", "unchecked"):
        p = percentiles(latencies[kind])
        result.extra[f"{kind}_latency_ms"] = p
    result.extra["rates"] = rates
    result.add(
        Row(
            "GET /me p50 latency, session checked (vs no check)",
            result.extra["checked_latency_ms"]["p50"],  # type: ignore[index]
            result.extra["unchecked_latency_ms"]["p50"],  # type: ignore[index]
            "same route, no check",
            unit="ms",
            higher_is_better=False,
            setup=HTTP_SETUP,
        )
    )


async def asgi_rates(redis_url: str, workdir: Path, result: Result) -> None:
    """The same comparison in process, ASGI calls without HTTP or a client: the server's cost."""
    import httpx

    from upak.config import load_settings

    settings = load_settings(
        env_file=None,
        redis_url=redis_url,
        database_url=f"sqlite+aiosqlite:///{workdir}/asgi.db",
        rate_limit_enabled=False,
        redis_key_prefix="asgi:",
    )
    app = make_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"email": "a@x.io", "password": PASSWORD}
            await client.post("/auth/register", json=body)
            logged_in = await client.post("/auth/login", json=body)
            user_id, cookie = logged_in.json()["id"], logged_in.cookies["upak_session"]

        async def call(path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> None:
            status = await asgi_get(app, path, query, headers)
            if status != 200:
                raise RuntimeError(f"{path}: {status}")

        with_cookie = [(b"cookie", f"upak_session={cookie}".encode())]
        query = f"user_id={user_id}".encode()
        rates = await alternating(
            {
                "unchecked": meter(lambda i: call("/bench/me-unchecked", query, []), CONCURRENCY),
                "checked": meter(lambda i: call("/me", b"", with_cookie), CONCURRENCY),
            },
            seconds=SECONDS * ROUNDS,
            warmup=0.5,
        )
    result.extra["asgi_rates"] = rates
    result.add(
        Row(
            "GET /me in-process ASGI calls/s, checked (vs no check)",
            mean(rates["checked"]),
            mean(rates["unchecked"]),
            "same route, no check",
            unit="req/s",
            setup=f"{CONCURRENCY} concurrent in-process ASGI calls, one user's session; both "
            "warmed 0.5 s, paired rounds in alternating order; peer: the same /me body from the "
            "cache without the session check, on an ordinary FastAPI route (/me is one of the "
            "app's hot routes, answered without FastAPI's routing: the two differ in more "
            "than the check)",
        )
    )


async def memory_per_session(redis_url: str, result: Result) -> None:
    from upak.config import load_settings
    from upak.features.sessions import SessionManager
    from upak.store import KeySpace, build_store

    store = build_store(load_settings(env_file=None, redis_url=redis_url))
    await store.start()
    client = store.redis.client  # type: ignore[union-attr]
    await client.flushdb()
    manager = SessionManager(store, KeySpace("upak:"), idle_timeout=86_400, max_age=30 * 86_400)
    user_agent = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
    try:
        before = (await client.info("memory"))["used_memory"]
        for start in range(0, SESSIONS, 200):
            await asyncio.gather(
                *(
                    manager.create(10_000 + i, ip="203.0.113.77", user_agent=user_agent)
                    for i in range(start, start + 200)
                )
            )
        ours_info = ((await client.info("memory"))["used_memory"] - before) / SESSIONS
        keys = [k async for k in client.scan_iter(match="upak:sessions:*", count=1000)]
        usage = {k: await client.memory_usage(k, samples=0) for k in keys}
        ours_usage = sum(usage.values()) / SESSIONS
        hashes_only = sum(v for k, v in usage.items() if b":s:" in k) / SESSIONS
        await client.flushdb()

        # The peer layout: one string key per session, named by the raw token, JSON inside.
        before = (await client.info("memory"))["used_memory"]
        now = time.time()
        pipe = client.pipeline(transaction=False)
        for i in range(SESSIONS):
            blob = {
                "user_id": 10_000 + i,
                "created_at": now,
                "last_seen_at": now,
                "expires_at": now + 30 * 86_400,
                "ip": "203.0.113.77",
                "user_agent": user_agent,
            }
            pipe.set(f"session:{secrets.token_urlsafe(32)}", json.dumps(blob), ex=86_400)
        await pipe.execute()
        peer_info = ((await client.info("memory"))["used_memory"] - before) / SESSIONS
        keys = [k async for k in client.scan_iter(match="session:*", count=1000)]
        peer_usage = sum([await client.memory_usage(k, samples=0) for k in keys]) / SESSIONS
    finally:
        await store.close()
    peer = "JSON blob per token"
    setup = (
        f"{SESSIONS:,} sessions of {SESSIONS:,} distinct users (each its own index key), "
        "created 200 at a time; peer: one string key per session named by a random token, "
        "the same fields as JSON, EX 1 day, written through one pipeline"
    )
    result.add(
        Row(
            "Redis bytes/session, MEMORY USAGE (hash + per-user index)",
            ours_usage,
            peer_usage,
            peer,
            unit="B",
            higher_is_better=False,
            setup=setup,
        )
    )
    result.add(
        Row(
            "Redis bytes/session, its hash alone (no per-user index)",
            hashes_only,
            peer_usage,
            peer,
            unit="B",
            higher_is_better=False,
            setup=setup,
        )
    )
    result.add(
        Row(
            "Redis bytes/session, INFO used_memory growth",
            ours_info,
            peer_info,
            peer,
            unit="B",
            higher_is_better=False,
            setup=setup,
        )
    )


async def main() -> None:
    result = Result("sessions", "Sessions: cost of the session check, memory per session")
    result.notes.append(
        f"one uvicorn worker, httpx client in the bench process, {CONCURRENCY} concurrent, "
        f"{ROUNDS} paired rounds of {SECONDS:.0f} s per side, the order reversed each round, "
        f"the mean of the rounds; {SESSIONS} sessions of distinct users for memory (each with "
        "its own index key), next to one JSON string per session holding the same fields"
    )
    with redis_server() as redis, tempfile.TemporaryDirectory() as tmp:
        await memory_per_session(redis.url, result)
        await asgi_rates(redis.url, Path(tmp), result)
        proc, url = start_server(redis.url, Path(tmp))
        try:
            await http_rates(url, result)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    result.write()


if __name__ == "__main__":
    asyncio.run(main())

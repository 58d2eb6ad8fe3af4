"""`upak serve --workers 2` on a PostgreSQL that is stopped, started again, and hung (SIGSTOP).

The cluster is the suite's own (initdb on a free port), never the system's. What must hold:
while it is away every answer is a 503 problem+json with Retry-After, never a 500; /health
says the database is down; a login on a hung server answers within the deadline, not when
the server wakes; and each worker serves again by itself within seconds of its return.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.postgres import PostgresServer
from tests.support.redis_servers import RedisServer
from tests.support.service import Service, running_service
from tests.support.webhooks import SECRET, notification, signed_headers

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"
WORKERS = 2
STATEMENT_TIMEOUT = 2.0
LOGIN_DEADLINE = 10.0  # the bound for a login on a hung database
BACK_WITHIN = 8.0  # "within a few seconds" of the database's return, on a loaded machine


@pytest.fixture(scope="module")
def service(throwaway_postgres: PostgresServer, shared_redis: RedisServer) -> Iterator[Service]:
    """One server for the module (starting one costs seconds); each test its own users."""
    env = {
        "DATABASE_URL": throwaway_postgres.new_database(),
        "REDIS_URL": shared_redis.url,
        "REDIS_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}:",
        "WEBHOOK_SECRET": SECRET,
        "DATABASE_CONNECT_TIMEOUT": "1",
        "DATABASE_POOL_TIMEOUT": "1",
        "DATABASE_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT),
        "DATABASE_HEALTH_INTERVAL": "0.2",
        "RATE_LIMIT_LOGIN": "100000/minute",
        "RATE_LIMIT_LOGIN_IP": "100000/minute",
    }
    with running_service(env, workers=WORKERS) as running:
        yield running


@pytest.fixture(autouse=True)
def postgres_back(throwaway_postgres: PostgresServer) -> Iterator[None]:
    yield
    # A test that failed half-way must not leave the shared cluster stopped or frozen.
    if throwaway_postgres.paused:
        throwaway_postgres.resume()
    if throwaway_postgres.proc is None or throwaway_postgres.proc.poll() is not None:
        throwaway_postgres.start()


def client(service: Service, cookie: str | None = None) -> httpx.Client:
    # No keep-alive: each request may land on either worker.
    headers = {"Cookie": cookie} if cookie else {}
    limits = httpx.Limits(max_keepalive_connections=0)
    return httpx.Client(base_url=service.url, timeout=30, limits=limits, headers=headers)


def login(http: httpx.Client, email: str) -> httpx.Response:
    return http.post("/auth/login", json={"email": email, "password": PASSWORD})


def every_worker(service: Service, says: Callable[[dict], bool], within: float) -> float:
    """Seconds until every worker's /health satisfied `says`; fails after `within`."""
    started = time.monotonic()
    agreed: set[int] = set()
    with client(service) as http:
        while len(agreed) < WORKERS:
            assert time.monotonic() - started < within, f"workers {agreed} of {WORKERS} agreed"
            body = http.get("/health").json()
            (agreed.add if says(body) else agreed.discard)(body["worker"])
            time.sleep(0.02)
    return time.monotonic() - started


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1


def test_stopped_then_started_postgres(service: Service, throwaway_postgres: PostgresServer):
    with client(service) as http:
        assert http.post("/auth/register", json={"email": "a@x.io", "password": PASSWORD})
        signed_in = login(http, "a@x.io")
        assert signed_in.status_code == 200, signed_in.text
        cookie = "; ".join(f"{k}={v}" for k, v in signed_in.cookies.items())
        user_id = signed_in.json()["id"]
    with client(service, cookie) as me:
        assert me.get("/me").status_code == 200  # cached from here on
    body = notification(user_id=user_id)
    headers = signed_headers(body, at=time.time())

    throwaway_postgres.stop()
    statuses: list[int] = []
    with client(service) as http:
        for attempt in range(2 * WORKERS):
            response = login(http, "a@x.io")
            statuses.append(response.status_code)
            assert_unavailable(response)
            register = http.post(
                "/auth/register", json={"email": f"b{attempt}@x.io", "password": PASSWORD}
            )
            statuses.append(register.status_code)
            assert_unavailable(register)
            webhook = http.post("/webhooks/upak", content=body, headers=headers)
            statuses.append(webhook.status_code)
            assert webhook.status_code == 503  # not 200: the sender keeps retrying
        assert http.get("/plans").status_code == 200
    with client(service, cookie) as me:
        for _ in range(2 * WORKERS):
            assert me.get("/me").status_code == 200  # served from its cache meanwhile
    assert 500 not in statuses
    every_worker(service, lambda b: b["database"] == "down" and b["status"] == "degraded", 10)

    throwaway_postgres.start()
    assert every_worker(service, lambda b: b["database"] == "ok", BACK_WITHIN) < BACK_WITHIN
    with client(service) as http:
        for _ in range(2 * WORKERS):
            assert login(http, "a@x.io").status_code == 200
        retried = http.post("/webhooks/upak", content=body, headers=headers)
        assert retried.json() == {"status": "processed"}, retried.text
        again = http.post("/webhooks/upak", content=body, headers=headers)
        assert again.json() == {"status": "duplicate"}
    with client(service, cookie) as me:
        assert len(me.get("/payments").json()) == 1  # applied once


def test_hung_postgres_answers_a_login_within_the_deadline(
    service: Service, throwaway_postgres: PostgresServer
):
    with client(service) as http:
        assert http.post("/auth/register", json={"email": "h@x.io", "password": PASSWORD})
        for _ in range(2 * WORKERS):  # every worker holds a pooled connection now
            assert login(http, "h@x.io").status_code == 200

    throwaway_postgres.pause()
    try:
        with client(service) as http:
            for _ in range(2 * WORKERS):
                started = time.monotonic()
                response = login(http, "h@x.io")
                took = time.monotonic() - started
                assert_unavailable(response)
                assert took < LOGIN_DEADLINE, f"a login took {took:.1f}s on a hung database"
        every_worker(service, lambda b: b["database"] == "down", 15)
    finally:
        throwaway_postgres.resume()
    every_worker(service, lambda b: b["database"] == "ok", BACK_WITHIN)
    with client(service) as http:
        for _ in range(2 * WORKERS):
            assert login(http, "h@x.io").status_code == 200

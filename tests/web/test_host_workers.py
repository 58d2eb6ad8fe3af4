"""Four `upak serve` workers of one host across a real Redis outage (killed): they answer as
one from the host tier. A fresh connection per request, so any worker may answer each."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import httpx
import pytest

from tests.support.redis_servers import RedisServer
from tests.support.service import QUICK_FAILOVER_ENV, running_service
from tests.support.webhooks import SECRET, notification, signed_headers

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"
TRIES = 24  # with 4 workers taking connections at random, every one answers some of them


def client(url: str, cookie: str | None = None, ip: str | None = None) -> httpx.Client:
    limits = httpx.Limits(max_keepalive_connections=0)
    cookies = {"upak_session": cookie} if cookie else None
    headers = {"x-forwarded-for": ip} if ip else None
    return httpx.Client(base_url=url, timeout=10, limits=limits, cookies=cookies, headers=headers)


def login(url: str, email: str) -> str:
    with client(url) as c:
        response = c.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        return response.cookies["upak_session"]


CALLERS = iter(range(1, 250))


def me(url: str, cookie: str, times: int = TRIES) -> Counter[int]:
    # Each round from an address of its own: no limit counts these rounds together.
    with client(url, cookie, ip=f"198.51.100.{next(CALLERS)}") as c:
        return Counter(c.get("/me").status_code for _ in range(times))


def plans(url: str, cookie: str) -> Counter[str | None]:
    """The plan each of TRIES answers of /me gives (any worker may answer each)."""
    with client(url, cookie, ip=f"198.51.100.{next(CALLERS)}") as c:
        return Counter(c.get("/me").json()["plan"] for _ in range(TRIES))


def all_in(url: str, mode: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        with client(url) as c:
            modes = {c.get("/health").json()["store"] for _ in range(TRIES)}
        if modes == {mode}:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the workers did not all reach {mode} within {within}s: {modes}")
        time.sleep(0.1)


def test_four_workers_answer_as_one_through_an_outage(fresh_redis: RedisServer) -> None:
    env = {
        "REDIS_URL": fresh_redis.url,
        **QUICK_FAILOVER_ENV,
        "RATE_LIMIT_LOGIN_IP": "20/minute",
        "TRUSTED_PROXIES": "127.0.0.0/8",
        "WEBHOOK_SECRET": SECRET,
    }
    with running_service(env, workers=4) as service:
        url = service.url
        with client(url) as c:
            for email in ("before@example.com", "during@example.com", "gone@example.com"):
                assert (
                    c.post("/auth/register", json={"email": email, "password": PASSWORD})
                ).status_code == 201
            assert (
                c.post("/auth/register", json={"email": "pw@example.com", "password": PASSWORD})
            ).status_code == 201
        before, gone = login(url, "before@example.com"), login(url, "gone@example.com")
        assert me(url, before, 1) == {200: 1}  # used once, on whichever worker
        assert me(url, gone, 1) == {200: 1}
        # A password change while Redis is up ends every other session of the account, and
        # the cookie it was made with: each had been mirrored by whichever worker served it.
        changed, other = login(url, "pw@example.com"), login(url, "pw@example.com")
        assert me(url, other, 1) == {200: 1}
        with client(url, changed, ip="198.51.100.252") as c:
            answer = c.post(
                "/auth/password",
                json={"current_password": PASSWORD, "new_password": "a new horse battery"},
            )
            assert answer.status_code == 204, answer.text
            renewed = answer.cookies["upak_session"]

        fresh_redis.kill()
        all_in(url, "memory", within=10)
        during = login(url, "during@example.com")
        assert me(url, before) == {200: TRIES}
        assert me(url, during) == {200: TRIES}
        with client(url, gone, ip="198.51.100.250") as c:
            assert c.post("/auth/logout").status_code == 204
        assert me(url, gone) == {401: TRIES}  # a logout on one worker holds on all
        assert me(url, other) == {401: TRIES}  # the password change holds on every worker
        assert me(url, changed) == {401: TRIES}
        assert me(url, renewed) == {200: TRIES}
        # One host is the whole service: the workers cache in the host tier, and a payment
        # one worker records reaches the /me every worker had cached.
        assert plans(url, before) == {None: TRIES}
        with client(url, before) as c:
            body = notification(user_id=c.get("/me").json()["id"])
            paid = c.post(
                "/webhooks/upak", content=body, headers=signed_headers(body, at=time.time())
            )
            assert paid.json() == {"status": "processed"}, paid.text
            served = {c.get("/health").json()["host_cached_calls"] for _ in range(TRIES)}
        assert max(served) > 0  # the cache was on, in the tier, not bypassed
        assert plans(url, before) == {"start": TRIES}
        with client(url, ip="203.0.113.9") as c:  # one client, 40 logins of unknown emails
            statuses = Counter(
                c.post(
                    "/auth/login", json={"email": f"n{i}@example.com", "password": PASSWORD}
                ).status_code
                for i in range(40)
            )
        assert statuses == {401: 20, 429: 20}  # exact per host, whichever worker counted

        fresh_redis.start()  # an empty Redis: what it learns comes from the write-back
        all_in(url, "redis", within=20)
        assert me(url, during) == {200: TRIES}
        assert me(url, gone) == {401: TRIES}
        assert me(url, other) == {401: TRIES}
        assert "Traceback" not in service.log_path.read_text()


def test_a_worker_killed_mid_outage_leaves_no_lock_and_loses_nothing(
    fresh_redis: RedisServer,
) -> None:
    env = {
        "REDIS_URL": fresh_redis.url,
        **QUICK_FAILOVER_ENV,
    }
    with running_service(env, workers=4) as service:
        url = service.url
        with client(url) as c:
            c.post("/auth/register", json={"email": "k@example.com", "password": PASSWORD})
        before = login(url, "k@example.com")
        assert me(url, before, 1) == {200: 1}
        fresh_redis.kill()
        all_in(url, "memory", within=10)
        # Logins on whichever workers take them: with 4 workers, the one killed next almost
        # surely made some. They are journaled in the tier, not in that worker's memory.
        logins = [login(url, "k@example.com") for _ in range(8)]
        with client(url) as c:
            victim = int(c.get("/health").json()["worker"])
        os.kill(victim, signal.SIGKILL)  # mid-outage, perhaps inside a tier transaction
        time.sleep(0.5)
        # Whoever answers now (the three others, or the worker uvicorn starts in its place)
        # finds the tier unlocked and the session in it.
        assert me(url, before) == {200: TRIES}
        with client(url, before, ip="198.51.100.251") as c:
            assert c.post("/auth/logout").status_code == 204
        assert me(url, before) == {401: TRIES}

        fresh_redis.start()  # empty: every login below is in it only if it was written back
        all_in(url, "redis", within=20)
        for cookie in logins:
            assert me(url, cookie, 4) == {200: 4}
        assert me(url, before) == {401: TRIES}
        assert "Traceback" not in service.log_path.read_text()

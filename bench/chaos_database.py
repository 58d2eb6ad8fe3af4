"""Chaos, the database half: a PostgreSQL stopped, started, hung (SIGSTOP) and woken under load.

`upak serve --workers 2` on a PostgreSQL cluster of the run's own (initdb on a free port) and
a private Redis. Threads keep logged-in /me reads, logins and signed webhooks going (each
delivery sent until it is answered 200, as a sender retries, then once more); meanwhile:
stop at 3 s, start at 6 s, SIGSTOP at 10 s, SIGCONT at 16 s, end at 21 s. The hang
lasts twice the statement deadline, so a call cut off by the deadline cannot pass for one
that the wake-up answered.

Counted, per fault window: 500s and other 5xx that are not a 503 with Retry-After (goal 0),
503s (what an outage should answer), valid sessions answered 401 (wrongly logged out, goal
0), the slowest login answer while hung (the deadline bounds it), time until every worker
serves again; over the run, payments acknowledged 200 but not recorded (lost) and payments
applied twice (doubled), both goal 0. `bench/chaos.py` adds these rows to its report.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx

from common import ROOT, Result, Row, redis_server, unhandled_exceptions
from load import (
    PASSWORD,
    make_accounts,
    new_webhook_secret,
    plan_prices,
    service_env,
    signed_deliveries,
)
from tests.support.postgres import INSTALL_HINT, postgres_bin, postgres_server
from tests.support.service import running_service

SECONDS = 21.0
# (at, action, name of the window that starts there)
DB_TIMELINE = [
    (3.0, "stop", "database stopped"),
    (6.0, "start", "after the restart"),
    (10.0, "pause", "database hung (SIGSTOP)"),
    (16.0, "resume", "after SIGCONT"),
]
DEADLINES = {
    "DATABASE_CONNECT_TIMEOUT": "2",
    "DATABASE_POOL_TIMEOUT": "2",
    "DATABASE_STATEMENT_TIMEOUT": "3",
    "DATABASE_HEALTH_INTERVAL": "0.5",
}


@dataclass
class Answers:
    """Every answer: (seconds since start, kind, status, had Retry-After, seconds taken)."""

    rows: list[tuple[float, str, int, bool, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, at: float, kind: str, response: httpx.Response, took: float) -> None:
        with self.lock:
            retry = "retry-after" in response.headers
            self.rows.append((at, kind, response.status_code, retry, took))

    def within(self, start: float, end: float) -> list[tuple[float, str, int, bool, float]]:
        return [row for row in self.rows if start <= row[0] < end]


def _client(url: str) -> httpx.Client:
    # No keep-alive: every request may land on either worker.
    return httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def _loop(kind: str, pause: float, url, accounts, answers: Answers, started, stop) -> None:
    """One kind of traffic, round-robin over `accounts`, until `stop`."""
    i = 0
    with _client(url) as client:
        while not stop.is_set():
            account = accounts[i % len(accounts)]
            i += 1
            began = time.monotonic()
            with contextlib.suppress(httpx.HTTPError):
                if kind == "me":
                    response = client.get("/me", headers={"Cookie": account.cookie})
                else:  # a fresh login, no cookie held: the sessions before it stay valid
                    response = client.post(
                        "/auth/login", json={"email": account.email, "password": PASSWORD}
                    )
                    client.cookies.clear()
                answers.add(began - started, kind, response, time.monotonic() - began)
            time.sleep(pause)


def _sender(url, deliveries, answers: Answers, acked: list[str], started, stop) -> None:
    """A webhook sender: each delivery until it is answered 200, then a duplicate. After the
    run it still retries the delivery in hand for a while, as a real sender would."""
    with _client(url) as client:
        for _msg_id, headers, body in deliveries:
            if stop.is_set():
                return
            give_up = time.monotonic() + SECONDS + 15
            while time.monotonic() < give_up:
                began = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    response = client.post("/webhooks/upak", content=body, headers=headers)
                    answers.add(began - started, "webhook", response, time.monotonic() - began)
                    if response.status_code == 200:
                        acked.append(body.decode())
                        client.post("/webhooks/upak", content=body, headers=headers)
                        break
                time.sleep(0.2)
            time.sleep(0.05)


def _payments(pg, database: str) -> tuple[dict[str, int], int]:
    """(recorded payments by provider id, extensions beyond the payments: doubled effects)."""
    rows = pg.psql(
        "SELECT provider_payment_id, count(*) FROM payments GROUP BY 1", database=database
    )
    recorded = {}
    for line in filter(None, rows.splitlines()):
        payment_id, count = line.split("|")
        recorded[payment_id] = int(count)
    spans = pg.psql(
        "SELECT round(extract(epoch FROM u.subscription_expires_at - min(p.created_at)) "
        "/ 86400 / 30), count(p.id) FROM users u JOIN payments p ON p.user_id = u.id "
        "GROUP BY u.id, u.subscription_expires_at",
        database=database,
    )
    extra = 0
    for line in filter(None, spans.splitlines()):
        extensions, count = (int(float(part)) for part in line.split("|"))
        extra += max(0, extensions - count)
    return recorded, extra


def _back_after(health: list[tuple[float, int, str]], at: float, workers: int) -> float | None:
    """Seconds from `at` until every worker's /health said the database is ok."""
    ok: set[int] = set()
    for when, worker, database in health:
        if when < at:
            continue
        (ok.add if database == "ok" else ok.discard)(worker)
        if len(ok) >= workers:
            return when - at
    return None


def _poll_health(url, health: list, started: float, stop: threading.Event) -> None:
    with _client(url) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                body = client.get("/health").json()
                health.append((time.monotonic() - started, body["worker"], body["database"]))
            time.sleep(0.05)


def database_faults(result: Result) -> None:
    """Run the database faults under load and add their rows to `result`."""
    if postgres_bin() is None:
        result.notes.append(f"database faults not run: {INSTALL_HINT}")
        return
    secret = new_webhook_secret()
    with postgres_server() as pg, redis_server() as redis:
        url = pg.new_database()
        database = url.rsplit("/", 1)[1]
        env = {**service_env(redis.url, secret), "DATABASE_URL": url, **DEADLINES}
        with running_service(env, workers=2) as service:
            accounts = make_accounts(service.url, 10, tag="db" + secrets.token_hex(3))
            prices = plan_prices(service.url)
            deliveries = signed_deliveries(secret, accounts, prices, 400)
            answers, acked, health = Answers(), [], []
            stop = threading.Event()
            started = time.monotonic()
            run = (started, stop)
            jobs = [
                (_loop, ("me", 0.02, service.url, accounts, answers, *run)),
                (_loop, ("me", 0.02, service.url, accounts[::-1], answers, *run)),
                (_loop, ("login", 0.1, service.url, accounts, answers, *run)),
                (_sender, (service.url, deliveries, answers, acked, *run)),
                (_poll_health, (service.url, health, *run)),
            ]
            threads = [threading.Thread(target=job, args=args) for job, args in jobs]
            for thread in threads:
                thread.start()
            events = []
            for at, action, _ in DB_TIMELINE:
                time.sleep(max(0.0, at - (time.monotonic() - started)))
                events.append(time.monotonic() - started)
                {"stop": pg.stop, "start": pg.start, "pause": pg.pause, "resume": pg.resume}[
                    action
                ]()
            time.sleep(max(0.0, SECONDS - (time.monotonic() - started)))
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            recorded, doubled = _payments(pg, database)
            unhandled = unhandled_exceptions(service.log())

    acked_ids = {json.loads(body)["object"]["id"] for body in acked}
    lost = len(acked_ids - set(recorded))
    twice = sum(count - 1 for count in recorded.values()) + doubled
    bounds = [*events, SECONDS]
    for (_, _, name), start, end in zip(DB_TIMELINE, bounds, bounds[1:], strict=False):
        window = answers.within(start, end)
        bad = sum(1 for _, _, s, retry, _ in window if s >= 500 and not (s == 503 and retry))
        result.add(
            Row(
                f"{name}: 500s and 5xx without Retry-After",
                bad,
                unit="count",
                higher_is_better=False,
            )
        )
        if name.startswith("database"):
            unavailable = sum(1 for _, _, s, _, _ in window if s == 503)
            result.add(Row(f"{name}: 503 + Retry-After answers", unavailable, unit="count"))
        logged_out = sum(1 for _, kind, s, _, _ in window if kind == "me" and s == 401)
        result.add(
            Row(
                f"{name}: valid sessions answered 401",
                logged_out,
                unit="count",
                higher_is_better=False,
            )
        )
    hung = answers.within(events[2], events[3])
    slowest = max((took for _, kind, _, _, took in hung if kind == "login"), default=0.0)
    result.add(
        Row(
            "database hung: slowest login answer", slowest * 1000, unit="ms", higher_is_better=False
        )
    )
    for label, at in (("restart", events[1]), ("SIGCONT", events[3])):
        back = _back_after(health, at, workers=2)
        if back is not None:
            result.add(
                Row(
                    f"after the {label}: every worker's database ok",
                    back * 1000,
                    unit="ms",
                    higher_is_better=False,
                )
            )
    result.add(
        Row(
            "payments acknowledged 200 but not recorded (lost)",
            lost,
            unit="count",
            higher_is_better=False,
        )
    )
    result.add(Row("payments applied twice (doubled)", twice, unit="count", higher_is_better=False))
    result.add(
        Row(
            "unhandled exceptions in the service's log (database faults)",
            unhandled,
            unit="count",
            higher_is_better=False,
        )
    )
    result.add(Row("payments acknowledged over the database faults", len(acked_ids), unit="count"))
    result.notes.append(
        "Database faults: PostgreSQL of the run's own, stopped at 3 s, started at 6 s, SIGSTOP "
        f"at 10 s, SIGCONT at 16 s, under /me reads, logins and webhooks; deadlines {DEADLINES}. "
        "A 503 with Retry-After is the designed answer while the database is away."
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    database_faults(Result("chaos_database", "Chaos: the database faults alone (not written)"))

"""The mixed load of bench/load.py while Redis is killed, hung and restarted: what users saw.

Timeline (seconds into the load): kill -9 at 3, restart with its data at 6; SIGSTOP at 10,
SIGCONT at 13; kill -9 and restart EMPTY at 17; the load ends at 24. Redis runs with
`appendonly yes` and `appendfsync always`, so a restart "keeps its data" in the seed's sense.

Counted: 5xx responses (goal 0), duplicate webhook effects (goal 0: a subscription extended
more times than payments were recorded), sessions lost (goal 0 for sessions created before or
during the outages while Redis kept its data), time for each worker to switch to memory and
back, and p99 per kind of traffic over the whole run.

Then a Redis that is there but sick (`redis_sick_faults`), on a service of its own: full
(maxmemory under noeviction), BUSY (a script past busy-reply-threshold) and flapping
(every connection killed each 0.2 s), a few seconds each under logged-in reads and signed
payments (each sent 3 times). Per fault: 5xx, valid users answered 401, payments lost or
doubled. Last, the database faults (stopped, hung) on a PostgreSQL of the run's own: see
bench/chaos_database.py.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from chaos_database import database_faults
from common import ROOT, Result, Row, redis_server, unhandled_exceptions
from load import (
    PASSWORD,
    build_traffic,
    make_accounts,
    new_webhook_secret,
    plan_prices,
    run_mix,
    service_env,
    signed_deliveries,
)
from tests.support.scripts import BUSY_LUA
from tests.support.service import running_service

LOAD_SECONDS = 24
TIMELINE = [
    (3.0, "kill -9"),
    (6.0, "restart keeping data"),
    (10.0, "SIGSTOP"),
    (13.0, "SIGCONT"),
    (16.0, "check sessions"),
    (17.0, "kill -9, restart empty"),
]
PERIOD_DAYS = 30  # the `start` plan the load pays for


@dataclass
class HealthLog:
    """Every /health answer: (seconds since start, worker pid, store mode)."""

    samples: list[tuple[float, int, str]] = field(default_factory=list)

    def switch_times(self, event_at: float, to: str, until: float) -> dict[int, float]:
        """Per worker: seconds from `event_at` to its first answer in mode `to`."""
        seen: dict[int, float] = {}
        for at, worker, mode in self.samples:
            if event_at <= at < until and mode == to and worker not in seen:
                seen[worker] = at - event_at
        return seen


def poll_health(url: str, log: HealthLog, started: float, stop: threading.Event) -> None:
    with httpx.Client(timeout=2) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                # A new connection each time, so answers come from both workers.
                body = client.get(url + "/health", headers={"Connection": "close"}).json()
                log.samples.append((time.monotonic() - started, body["worker"], body["store"]))
            time.sleep(0.03)


def login_prober(url: str, accounts, cookies: list, started: float, stop: threading.Event):
    """Logs in every 0.25 s through the whole run; keeps every session cookie it was given."""
    i = 0
    with httpx.Client(base_url=url, timeout=5) as client:
        while not stop.is_set():
            account = accounts[i % len(accounts)]
            i += 1
            with contextlib.suppress(httpx.HTTPError):
                response = client.post(
                    "/auth/login", json={"email": account.email, "password": PASSWORD}
                )
                if response.status_code == 200:
                    cookie = "; ".join(f"{k}={v}" for k, v in response.cookies.items())
                    cookies.append((time.monotonic() - started, cookie))
            client.cookies.clear()
            time.sleep(0.25)


def duplicate_effects(db_path: Path) -> tuple[int, int]:
    """(payments recorded, subscription extensions beyond them) from the service's database."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT u.id, u.subscription_expires_at, MIN(p.created_at), COUNT(p.id) "
            "FROM users u JOIN payments p ON p.user_id = u.id GROUP BY u.id"
        ).fetchall()
    payments = extra = 0
    for _, expires, first_paid, count in rows:
        payments += count
        span = datetime.fromisoformat(str(expires)) - datetime.fromisoformat(str(first_paid))
        extensions = round(span.total_seconds() / (PERIOD_DAYS * 86400))
        extra += max(0, extensions - count)
    return payments, extra


def main() -> None:
    result = Result("chaos", "Chaos: the mixed load while Redis is killed, hung and restarted")
    workdir = Path(tempfile.mkdtemp(prefix="upak-chaos-"))
    secret = new_webhook_secret()
    durable = {"appendonly": "yes", "appendfsync": "always"}
    with (
        redis_server(config=durable) as redis,
        running_service(service_env(redis.url, secret)) as service,
    ):
        traffic = build_traffic(service, secret, workdir, tag=secrets.token_hex(3))
        probe_accounts = make_accounts(service.url, 5, tag="probe" + secrets.token_hex(3))
        health, cookies, stop = HealthLog(), [], threading.Event()
        started = time.monotonic()
        threads = [
            threading.Thread(target=poll_health, args=(service.url, health, started, stop)),
            threading.Thread(
                target=login_prober, args=(service.url, probe_accounts, cookies, started, stop)
            ),
        ]
        for thread in threads:
            thread.start()
        mix: dict = {}
        loader = threading.Thread(
            target=lambda: mix.update(run_mix(service, traffic, LOAD_SECONDS))
        )
        loader.start()
        events: list[tuple[float, str]] = []
        for at, action in TIMELINE:
            time.sleep(max(0.0, at - (time.monotonic() - started)))
            events.append((time.monotonic() - started, action))
            if action == "kill -9":
                redis.kill()
            elif action == "restart keeping data":
                redis.start()
            elif action == "SIGSTOP":
                redis.pause()
            elif action == "SIGCONT":
                redis.resume()
            elif action == "check sessions":
                # Every session made so far (before, during and between the outages, while
                # Redis kept its data) must still be valid.
                checked = list(cookies)
                with httpx.Client(base_url=service.url, timeout=5) as client:
                    lost_kept = sum(
                        client.get("/me", headers={"Cookie": c}).status_code != 200
                        for _, c in checked
                    )
            else:
                redis.kill()
                for leftover in ("appendonlydir", "dump.rdb"):
                    path = redis.workdir / leftover
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
                redis.start()
        loader.join()
        time.sleep(1.5)  # let both workers finish writing back
        empty_restart_at = events[-1][0]
        stop.set()
        for thread in threads:
            thread.join()
        # Sessions made before the empty restart lived in Redis' data, which that restart threw
        # away on purpose; the seed's promise covers restarts that keep the data.
        kept = [c for at, c in cookies if at < empty_restart_at - 0.5]
        after = [c for at, c in cookies if at > empty_restart_at + 0.5]
        with httpx.Client(base_url=service.url, timeout=5) as client:
            lost_after = sum(
                client.get("/me", headers={"Cookie": c}).status_code != 200 for c in after
            )
            lost_before_empty = sum(
                client.get("/me", headers={"Cookie": c}).status_code != 200 for c in kept
            )
        payments, extra_effects = duplicate_effects(service.workdir / "upak.db")
        unhandled = unhandled_exceptions(service.log())

    server_errors = sum(data["server_errors"] for data in mix.values())
    # Which kind of traffic got which 5xx: a count alone does not say where to look.
    by_kind = {
        kind: {s: n for s, n in sorted(data["status"].items()) if s.startswith("5")}
        for kind, data in mix.items()
        if data["server_errors"]
    }
    result.add(
        Row(
            "5xx responses during the whole run",
            server_errors,
            unit="count",
            higher_is_better=False,
            setup=f"by kind and status: {by_kind}" if by_kind else "",
        )
    )
    result.add(
        Row(
            "unhandled exceptions in the service's log (Redis faults)",
            unhandled,
            unit="count",
            higher_is_better=False,
        )
    )
    result.add(
        Row("duplicate webhook effects", extra_effects, unit="count", higher_is_better=False)
    )
    result.add(Row("payments recorded (each delivery was sent 3 times)", payments, unit="count"))
    result.add(
        Row(
            f"sessions lost across kill -9 and SIGSTOP (of {len(checked)} made before and "
            "during them, Redis keeping its data)",
            lost_kept,
            unit="count",
            higher_is_better=False,
        )
    )
    result.add(
        Row(
            "sessions lost, made after the EMPTY restart",
            lost_after,
            unit="count",
            higher_is_better=False,
        )
    )
    result.add(
        Row(
            "sessions created before the EMPTY restart, invalid after it",
            lost_before_empty,
            unit="count",
            higher_is_better=False,
        )
    )
    for (at, action), (until, _) in zip(events, [*events[1:], (LOAD_SECONDS, "")], strict=True):
        if action in ("kill -9", "SIGSTOP", "kill -9, restart empty"):
            to_memory = health.switch_times(at, "memory", until)
            if to_memory:
                result.add(
                    Row(
                        f"{action}: slowest worker to switch to memory",
                        max(to_memory.values()) * 1000,
                        unit="ms",
                        higher_is_better=False,
                    )
                )
        if action in ("restart keeping data", "SIGCONT", "kill -9, restart empty"):
            back = health.switch_times(at, "redis", until)
            if back:
                result.add(
                    Row(
                        f"{action}: slowest worker back on Redis",
                        max(back.values()) * 1000,
                        unit="ms",
                        higher_is_better=False,
                    )
                )
    for kind, data in mix.items():
        result.add(
            Row(
                f"{kind}: p99 over the whole run",
                data["p99_us"] / 1000,
                unit="ms",
                higher_is_better=False,
            )
        )
        result.add(Row(f"{kind}: requests/s over the whole run", data["rps"]))
    result.notes.append(
        f"{len(cookies)} logins probed through the run; 5xx counted by wrk's Lua per status. "
        f"The load: {len(traffic.files)} wrk processes at once for {LOAD_SECONDS} s (connections: "
        + ", ".join(f"{k} {v}" for k, v in traffic.connections.items())
        + "), the accounts' cookies and the webhook deliveries round robin; no peer (the rows "
        "are counts and latencies of ours through the faults). "
        "Sessions created before an EMPTY restart are gone with Redis' data (that restart "
        "discards it on purpose); the count is reported, not hidden."
    )
    result.extra["events"] = events
    database_faults(result)  # the database stopped and hung, on a PostgreSQL of its own
    for row in redis_sick_faults():
        result.add(row)
    result.write()


# --- a Redis that is there but sick: full, busy, flapping ---

SICK_SECONDS = {"Redis full (maxmemory, noeviction)": 3.0, "Redis BUSY (script)": 3.0}
FLAP_SECONDS = 5.0
SICK_PAYMENTS = 30  # per fault, each delivered 3 times


@dataclass
class SickTally:
    """What users saw during one fault."""

    server_errors: int = 0
    logged_out: int = 0  # 401 for a session that is valid
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: int) -> None:
        with self.lock:
            self.requests += 1
            self.server_errors += status >= 500
            self.logged_out += status == 401


def _sick_load(url: str, cookies: list[str], deliveries, tally: SickTally, seconds: float):
    """Logged-in /me reads on 4 threads and every delivery 3 times, for `seconds`."""
    deadline = time.monotonic() + seconds
    pending = [d for d in deliveries for _ in range(3)]

    def reader(index: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            i = index
            while time.monotonic() < deadline:
                cookie = cookies[i % len(cookies)]
                i += 1
                with contextlib.suppress(httpx.HTTPError):
                    tally.count(client.get("/me", headers={"Cookie": cookie}).status_code)

    def sender() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while pending and time.monotonic() < deadline + 5:
                _, headers, body = pending.pop()
                with contextlib.suppress(httpx.HTTPError):
                    status = client.post(
                        "/webhooks/upak", content=body, headers=headers
                    ).status_code
                    tally.count(status)
                    if status == 409:  # in flight on the other worker: the sender retries
                        pending.insert(0, (_, headers, body))
                time.sleep(seconds / (SICK_PAYMENTS * 3))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=sender))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _payments_off(db_path: Path, deliveries) -> int:
    """Deliveries recorded other than exactly once (lost or doubled)."""
    ids = [json_id for json_id in (_payment_id(body) for _, _, body in deliveries)]
    with sqlite3.connect(db_path) as db:
        counts = dict(
            db.execute(
                "SELECT provider_payment_id, COUNT(*) FROM payments GROUP BY provider_payment_id"
            ).fetchall()
        )
    return sum(counts.get(payment_id, 0) != 1 for payment_id in ids)


def _payment_id(body: bytes) -> str:
    import json

    return json.loads(body)["object"]["id"]


def _flap(redis, seconds: float) -> None:
    admin = redis.client()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            admin.client_kill_filter(_type="normal")
        time.sleep(0.2)


def redis_sick_faults() -> list[Row]:
    """Full, BUSY and flapping, one after the other, on a service of their own."""
    secret = new_webhook_secret()
    rows: list[Row] = []
    with (
        redis_server() as redis,
        running_service(service_env(redis.url, secret)) as service,
    ):
        accounts = make_accounts(service.url, 8, tag="sick" + secrets.token_hex(3))
        cookies = [a.cookie for a in accounts]
        prices = plan_prices(service.url)
        admin = redis.client()
        faults = [*SICK_SECONDS, "Redis flapping (connections killed every 0.2 s)"]
        for fault in faults:
            deliveries = signed_deliveries(secret, accounts, prices, SICK_PAYMENTS)
            tally = SickTally()
            seconds = SICK_SECONDS.get(fault, FLAP_SECONDS)
            load = threading.Thread(
                target=_sick_load, args=(service.url, cookies, deliveries, tally, seconds + 1)
            )
            load.start()
            time.sleep(0.5)
            if fault.startswith("Redis full"):
                admin.config_set("maxmemory-policy", "noeviction")
                admin.config_set("maxmemory", "1")
                time.sleep(seconds)
                admin.config_set("maxmemory", "0")
            elif fault.startswith("Redis BUSY"):
                admin.config_set("busy-reply-threshold", "100")
                with contextlib.suppress(Exception):
                    redis.client().eval(BUSY_LUA, 0, int(seconds * 1000))
            else:
                _flap(redis, seconds)
            load.join()
            time.sleep(2.0)  # both workers write back before the payments are counted
            off = _payments_off(service.workdir / "upak.db", deliveries)
            unhandled = unhandled_exceptions(service.log())
            rows += [
                Row(f"{fault}: 5xx", tally.server_errors, unit="count", higher_is_better=False),
                Row(
                    f"{fault}: valid sessions answered 401",
                    tally.logged_out,
                    unit="count",
                    higher_is_better=False,
                ),
                Row(
                    f"{fault}: payments lost or doubled (of {len(deliveries)})",
                    off,
                    unit="count",
                    higher_is_better=False,
                ),
                Row(f"{fault}: requests", tally.requests, unit="count"),
                Row(
                    f"{fault}: unhandled exceptions in the service's log (so far)",
                    unhandled,
                    unit="count",
                    higher_is_better=False,
                ),
            ]
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

"""The full service under a mixed load, next to bare FastAPI: requests/s and p50/p99 per route.

One run: a private redis-server, `upak serve --workers 2` on SQLite, and wrk processes (one per
kind of traffic, so each reports its own latency) driving logged-in reads (/me and /plans),
logins, signed webhooks (every delivery sent three times) and anonymous requests. Then a
concurrency sweep of GET /plans, ours against bare FastAPI (both up, each warmed, paired rounds
in alternating order at each connection count). The load generators are separate
processes; every run is bounded in time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import httpx

from common import ROOT, Result, Row, redis_server
from tests.support.redis_servers import free_port
from tests.support.service import Service, running_service

HERE = Path(__file__).resolve().parent
WRK = shutil.which("wrk")
SEP, HSEP = "\x1e", "\x1f"
USERS = 40
MIX_SECONDS = 8
SWEEP = (8, 32, 128)
SWEEP_SECONDS = 2
SWEEP_ROUNDS = 4
PASSWORD = "load-test-password-1"


def service_env(redis_url: str, webhook_secret: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "WEBHOOK_SECRET": webhook_secret,
        # Limits far above the offered load: this run measures throughput, not refusals.
        "RATE_LIMIT_DEFAULT": "10000000/minute:gcra",
        "RATE_LIMIT_LOGIN": "10000000/minute:gcra",
        "RATE_LIMIT_LOGIN_IP": "10000000/minute:gcra",
        "RATE_LIMIT_WEBHOOKS": "10000000/minute:gcra",
    }


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass
class Account:
    id: int
    email: str
    cookie: str


def make_accounts(base_url: str, count: int, tag: str) -> list[Account]:
    accounts = []
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for i in range(count):
            email = f"load{tag}-{i}@example.com"
            client.post("/auth/register", json={"email": email, "password": PASSWORD})
            response = client.post("/auth/login", json={"email": email, "password": PASSWORD})
            response.raise_for_status()
            cookie = "; ".join(f"{k}={v}" for k, v in response.cookies.items())
            accounts.append(Account(int(response.json()["id"]), email, cookie))
            client.cookies.clear()
    return accounts


def plan_prices(base_url: str) -> dict[str, dict[str, str]]:
    plans = httpx.get(base_url + "/plans", timeout=10).json()
    return {plan["id"]: plan["price"] for plan in plans}


def notification(payment_id: str, user_id: int, plan: str, price: dict[str, str]) -> bytes:
    """A YooKassa payment.succeeded notification, in the SDK's field layout."""
    body = {
        "type": "notification",
        "event": "payment.succeeded",
        "object": {
            "id": payment_id,
            "status": "succeeded",
            "paid": True,
            "amount": price,
            "income_amount": price,
            "description": f"UPAK {plan}",
            "created_at": "2026-11-26T10:00:00.000Z",
            "captured_at": "2026-11-26T10:00:01.000Z",
            "test": True,
            "refundable": True,
            "metadata": {"user_id": str(user_id), "plan": plan},
            "recipient": {"account_id": "100500", "gateway_id": "100700"},
            "payment_method": {"type": "bank_card", "id": payment_id, "saved": False},
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def signed_deliveries(
    secret: str, accounts: list[Account], prices: dict[str, dict[str, str]], count: int
) -> list[tuple[str, dict[str, str], bytes]]:
    from datetime import datetime

    from standardwebhooks.webhooks import Webhook

    hook = Webhook(secret)
    deliveries = []
    for i in range(count):
        account = accounts[i % len(accounts)]
        msg_id = f"msg_{secrets.token_hex(8)}"
        body = notification(f"pay-{secrets.token_hex(8)}", account.id, "start", prices["start"])
        now = datetime.now(tz=UTC)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": hook.sign(msg_id, now, body.decode()),
            "Content-Type": "application/json",
        }
        deliveries.append((msg_id, headers, body))
    return deliveries


def write_requests(path: Path, requests: list[tuple[str, str, dict[str, str], bytes]]) -> Path:
    with path.open("w") as out:
        for method, target, headers, body in requests:
            header_text = HSEP.join(f"{k}: {v}" for k, v in headers.items())
            out.write(SEP.join((method, target, header_text, body.decode())) + "\n")
    return path


def start_wrk(url: str, requests_file: Path, connections: int, seconds: float) -> subprocess.Popen:
    if WRK is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench does it)")
    return subprocess.Popen(
        [
            WRK,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(HERE / "wrk" / "replay.lua"),
            url,
            "--",
            str(requests_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wrk_result(proc: subprocess.Popen) -> dict:
    output, _ = proc.communicate(timeout=120)
    match = re.search(r"WRKJSON (\{.*\})", output)
    if not match:
        raise RuntimeError(f"wrk gave no result:\n{output[-2000:]}")
    data = json.loads(match.group(1))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    data["server_errors"] = sum(n for s, n in data["status"].items() if s.startswith("5"))
    return data


@dataclass
class Traffic:
    """The request files of one mixed-load run, by kind of traffic."""

    files: dict[str, Path]
    deliveries: list[tuple[str, dict[str, str], bytes]]
    connections: dict[str, int]


def build_traffic(service: Service, secret: str, workdir: Path, tag: str) -> Traffic:
    accounts = make_accounts(service.url, USERS, tag)
    prices = plan_prices(service.url)
    deliveries = signed_deliveries(secret, accounts, prices, 400)
    me_reads = [("GET", "/me", {"Cookie": a.cookie}, b"") for a in accounts]
    plans_reads = [("GET", "/plans", {"Cookie": a.cookie}, b"") for a in accounts]
    logins = [
        (
            "POST",
            "/auth/login",
            {"Content-Type": "application/json"},
            json.dumps({"email": a.email, "password": PASSWORD}).encode(),
        )
        for a in accounts
    ]
    webhooks = [
        ("POST", "/webhooks/upak", headers, body)
        for _, headers, body in deliveries
        for _ in range(3)  # every delivery three times: the replay gate must absorb two
    ]
    anonymous = [("GET", "/plans", {}, b""), ("GET", "/me", {}, b"")]
    files = {
        "logged-in GET /me": write_requests(workdir / "me.txt", me_reads),
        "logged-in GET /plans": write_requests(workdir / "plans.txt", plans_reads),
        "logins (POST /auth/login)": write_requests(workdir / "logins.txt", logins),
        "signed webhooks (POST /webhooks/upak)": write_requests(workdir / "hooks.txt", webhooks),
        "anonymous (/plans, /me 401)": write_requests(workdir / "anon.txt", anonymous),
    }
    connections = dict(zip(files, (8, 8, 4, 8, 8), strict=True))
    return Traffic(files, deliveries, connections)


def run_mix(service: Service, traffic: Traffic, seconds: float) -> dict[str, dict]:
    procs = {
        kind: start_wrk(service.url, path, traffic.connections[kind], seconds)
        for kind, path in traffic.files.items()
    }
    return {kind: wrk_result(proc) for kind, proc in procs.items()}


@contextlib.contextmanager
def bare_fastapi(plans_json: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "BARE_PLANS_JSON": plans_json}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "peers.bare_fastapi:app",
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/plans", timeout=0.5).status_code == 200:
                    break
            time.sleep(0.05)
        time.sleep(0.5)  # let the second worker come up too
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def sweep(urls: dict[str, str], workdir: Path) -> dict[str, dict[str, list[float]]]:
    """GET /plans at each of SWEEP's connection counts on every server of `urls`: each warmed
    1 s at that count, then SWEEP_ROUNDS rounds, the order reversed each round; per side and
    count the mean req/s and p99."""
    path = write_requests(workdir / "sweep.txt", [("GET", "/plans", {}, b"")])
    curves = {name: {"rps": [], "p99_ms": []} for name in urls}
    names = list(urls)
    for connections in SWEEP:
        for url in urls.values():
            wrk_result(start_wrk(url, path, connections, 1))
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for n in range(SWEEP_ROUNDS):
            for name in names if n % 2 == 0 else reversed(names):
                runs[name].append(
                    wrk_result(start_wrk(urls[name], path, connections, SWEEP_SECONDS))
                )
        for name, results in runs.items():
            curves[name]["rps"].append(sum(r["rps"] for r in results) / len(results))
            curves[name]["p99_ms"].append(sum(r["p99_us"] for r in results) / len(results) / 1000)
    return curves


def main() -> None:
    result = Result("load", "Load: the full service (2 workers, Redis, SQLite) under a mixed load")
    workdir = Path(tempfile.mkdtemp(prefix="upak-load-"))
    secret = new_webhook_secret()
    with redis_server() as redis, running_service(service_env(redis.url, secret)) as service:
        traffic = build_traffic(service, secret, workdir, tag=secrets.token_hex(3))
        mixed = run_mix(service, traffic, MIX_SECONDS)
        plans_json = httpx.get(service.url + "/plans").text
        with bare_fastapi(plans_json) as peer_url:
            curves = sweep({"ours": service.url, "bare": peer_url}, workdir)
    ours, peer = curves["ours"], curves["bare"]
    print(f"mixed load for {MIX_SECONDS}s, all kinds at once (requests/s, p50/p99 ms)")
    for kind, data in mixed.items():
        result.add(Row(f"{kind}: requests/s", data["rps"]))
        result.add(Row(f"{kind}: p50", data["p50_us"] / 1000, unit="ms", higher_is_better=False))
        result.add(Row(f"{kind}: p99", data["p99_us"] / 1000, unit="ms", higher_is_better=False))
        result.add(
            Row(
                f"{kind}: 5xx responses",
                data["server_errors"],
                unit="count",
                higher_is_better=False,
            )
        )
    for i, connections in enumerate(SWEEP):
        result.add(
            Row(
                f"GET /plans at {connections} connections: requests/s",
                ours["rps"][i],
                peer["rps"][i],
                "bare FastAPI, same JSON",
                setup=f"wrk -t1 -c{connections}, one URL (one cache entry), anonymous; both "
                f"2 uvicorn workers, warmed 1 s, {SWEEP_ROUNDS} rounds of {SWEEP_SECONDS} s in "
                "alternating order, the mean; peer: FastAPI returning the same JSON bytes, "
                "no middleware",
            )
        )
    result.extra["curves"] = [
        {
            "id": "plans",
            "title": "GET /plans",
            "x": list(SWEEP),
            "series": {"UPAK (all middleware, cached)": ours, "bare FastAPI": peer},
        }
    ]
    result.extra["mix"] = mixed
    result.notes.append(
        f"{USERS} accounts; {len(traffic.files)} wrk processes at once (connections: "
        + ", ".join(f"{k} {v}" for k, v in traffic.connections.items())
        + f") for {MIX_SECONDS} s, the accounts' cookies and the webhook deliveries round "
        "robin; rate limits raised far above the load so that the run measures throughput. "
        "The mixed-load rows have no peer. The sweep: ours and bare FastAPI both up, wrk, "
        "ours and redis-server sharing the 2 cores."
    )
    result.write()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

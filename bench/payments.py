"""Checkout: POST /payments p50/p99 against the YooKassa stand-in, and our API client next to
the official SDK.

  ours: the full route (Idempotency-Key in Redis, the payment created through our async httpx
        client, the pending row written to SQLite), sequential and 16 concurrent; and our
        client's create_payment alone;
  peer: the `yookassa` SDK's Payment.create (requests, synchronous) on the same stand-in,
        sequential, and 16 concurrent in threads (asyncio.to_thread: the usual way to keep a
        synchronous client off the event loop).
The stand-in runs in a process of its own. Run: .venv/bin/python bench/payments.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
from pydantic import SecretStr

from common import ROOT, Result, Row, percentiles, redis_server  # puts the repository on sys.path

from tests.support.redis_servers import free_port  # isort: skip
from tests.support.webhooks import create_database
from tests.support.yookassa_api import SECRET_KEY, SHOP_ID
from upak.config import load_settings
from upak.domain.yookassa_api import CheckoutRequest, YooKassaAPI
from upak.web.app import create_app
from upak.web.routes.payments import current_user_id

SEQUENTIAL = 300
CONCURRENT, ROUNDS = 16, 40
RETURN_URL = "https://upak.example/paid"


def start_stand_in() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.yookassa_api", str(port)], cwd=ROOT
    )
    url = f"http://127.0.0.1:{port}/v3"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/payments/none", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the YooKassa stand-in did not start")


async def timed(call) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def route_latencies(url: str, redis_url: str, db_url: str) -> tuple[dict, dict, float]:
    settings = load_settings(
        env_file=None,
        redis_url=redis_url,
        database_url=db_url,
        yookassa_api_url=url,
        yookassa_shop_id=SHOP_ID,
        yookassa_secret_key=SECRET_KEY,
        rate_limit_enabled=False,
    )
    app = create_app(settings)
    app.dependency_overrides[current_user_id] = lambda: 1
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
    ):

        async def checkout() -> None:
            response = await client.post(
                "/payments",
                json={"plan": "start", "return_url": RETURN_URL},
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            assert response.status_code == 201, response.text

        for _ in range(20):  # warm-up: connections, caches
            await checkout()
        sequential = [await timed(checkout) for _ in range(SEQUENTIAL)]
        concurrent: list[float] = []
        started = time.perf_counter()
        for _ in range(ROUNDS):
            concurrent += await asyncio.gather(*(timed(checkout) for _ in range(CONCURRENT)))
        rate = len(concurrent) / (time.perf_counter() - started)
    return percentiles(sequential), percentiles(concurrent), rate


def order() -> CheckoutRequest:
    return CheckoutRequest(Decimal("490.00"), "RUB", "UPAK Start", 1, "start", RETURN_URL)


async def client_figures(url: str) -> tuple[dict, float]:
    api = YooKassaAPI(url, SHOP_ID, SecretStr(SECRET_KEY), timeout=5)
    try:
        for _ in range(20):
            await api.create_payment(order(), str(uuid.uuid4()))
        sequential = [
            await timed(lambda: api.create_payment(order(), str(uuid.uuid4())))
            for _ in range(SEQUENTIAL)
        ]
        started = time.perf_counter()
        for _ in range(ROUNDS):
            await asyncio.gather(
                *(api.create_payment(order(), str(uuid.uuid4())) for _ in range(CONCURRENT))
            )
        rate = CONCURRENT * ROUNDS / (time.perf_counter() - started)
    finally:
        await api.close()
    return percentiles(sequential), rate


async def sdk_figures(url: str) -> tuple[dict, float]:
    from yookassa import Configuration
    from yookassa import Payment as SdkPayment

    Configuration.configure(SHOP_ID, SECRET_KEY, api_url=url)

    def create() -> None:
        SdkPayment.create(order().body(), str(uuid.uuid4()))

    for _ in range(20):
        create()
    sequential = []
    for _ in range(SEQUENTIAL):
        started = time.perf_counter()
        create()
        sequential.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(ROUNDS):
        await asyncio.gather(*(asyncio.to_thread(create) for _ in range(CONCURRENT)))
    rate = CONCURRENT * ROUNDS / (time.perf_counter() - started)
    return percentiles(sequential), rate


def averaged(*rounds: tuple[dict, float]) -> tuple[dict, float]:
    """The mean of each percentile and of the rate over `rounds`."""
    quantiles = {q: sum(r[0][q] for r in rounds) / len(rounds) for q in rounds[0][0]}
    return quantiles, sum(r[1] for r in rounds) / len(rounds)


async def main() -> None:
    process, url = start_stand_in()
    result = Result("payments", "Payments: checkout through YooKassa (local stand-in)")
    try:
        with redis_server() as redis, tempfile.TemporaryDirectory() as tmp:
            db_url = create_database(str(Path(tmp) / "bench.db"), users=1)
            alone, together, route_rate = await route_latencies(url, redis.url, db_url)
            # Two rounds, the order reversed in the second: neither side always goes first.
            first = [await client_figures(url), await sdk_figures(url)]
            second = [await sdk_figures(url), await client_figures(url)]
            ours, ours_rate = averaged(first[0], second[1])
            sdk, sdk_rate = averaged(first[1], second[0])
    finally:
        process.terminate()
        process.wait(timeout=10)
    ms = {"unit": "ms", "higher_is_better": False}
    route = (
        "in-process ASGI calls after 20 warm-up calls, a new Idempotency-Key each, one user; "
        "no peer (the route's own latency)"
    )
    alone_setup = f"1 caller, {SEQUENTIAL} sequential calls; {route}"
    together_setup = f"{CONCURRENT} concurrent, {ROUNDS} batches of {CONCURRENT}; {route}"
    for q in ("p50", "p99"):
        result.add(
            Row(f"checkout POST /payments: {q}, one at a time", alone[q], **ms, setup=alone_setup)
        )
    result.add(
        Row(
            f"checkout POST /payments: p99, {CONCURRENT} concurrent",
            together["p99"],
            **ms,
            setup=together_setup,
        )
    )
    result.add(
        Row(
            f"checkout POST /payments: req/s, {CONCURRENT} concurrent",
            route_rate,
            setup=together_setup,
        )
    )
    sdk_name = "yookassa SDK Payment.create"
    paired = (
        "each side warmed 20 calls; two rounds, ours first then the SDK first, the mean; peer: "
        "the official yookassa SDK, Configuration.configure(shop, key, api_url=stand-in)"
    )
    for q in ("p50", "p99"):
        result.add(
            Row(
                f"create payment call: {q}, one at a time",
                ours[q],
                sdk[q],
                sdk_name,
                **ms,
                setup=f"1 caller, {SEQUENTIAL} sequential calls, a new idempotence key each; "
                + paired,
            )
        )
    result.add(
        Row(
            f"create payment calls/s, {CONCURRENT} concurrent",
            ours_rate,
            sdk_rate,
            f"{sdk_name} in {CONCURRENT} threads",
            setup=f"{CONCURRENT} concurrent (ours asyncio, the SDK in threads), {ROUNDS} "
            "batches; " + paired,
        )
    )
    result.notes.append(
        "The stand-in (tests/support/yookassa_api.py) runs in its own process on this machine, "
        "so these figures are our overhead plus a local round trip, not YooKassa's latency. "
        "The route figures skip the login lookup (the user is fixed) and include the Redis "
        "Idempotency-Key record and the pending row in SQLite."
    )
    result.write()


if __name__ == "__main__":
    asyncio.run(main())

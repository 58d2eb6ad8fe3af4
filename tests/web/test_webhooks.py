"""The webhook endpoints in process: a real app on a real Redis and a SQLite file."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from yookassa.domain.common.security_helper import SecurityHelper

from tests.support.redis_servers import RedisServer, free_port
from tests.support.webhooks import (
    SECRET,
    YOOKASSA_IP,
    MakeHarness,
    harnesses,
    notification,
    signed_headers,
)
from upak.domain.db import make_sessionmaker
from upak.features.yookassa import YOOKASSA_NETWORKS
from upak.web.routes.payments import current_user_id

NOW = time.time()
START_DAYS = timedelta(days=30)


@pytest.fixture
async def harness(
    tmp_path: Path, shared_redis: RedisServer, key_prefix: str
) -> AsyncIterator[MakeHarness]:
    settings = {"redis_url": shared_redis.url, "redis_key_prefix": key_prefix}
    async with harnesses(tmp_path, NOW, webhook_secret=SECRET, **settings) as build:
        yield build


async def post_signed(client: httpx.AsyncClient, body: bytes, *, at: float, **kwargs):
    headers = signed_headers(body, at=at, **kwargs)
    return await client.post("/webhooks/upak", content=body, headers=headers), headers


# --- catalogue --------------------------------------------------------------------------------


async def test_plans_are_listed(harness: MakeHarness) -> None:
    h = await harness()
    async with h.client() as client:
        plans = (await client.get("/plans")).json()
    assert [p["id"] for p in plans] == ["start", "pro"]
    assert plans[0] == {
        "id": "start",
        "title": "Start",
        "price": {"value": "490.00", "currency": "RUB"},
        "period_days": 30,
    }


# --- /webhooks/upak -----------------------------------------------------------------------------


async def test_a_signed_payment_is_processed_once_and_replays_are_duplicates(
    harness: MakeHarness,
) -> None:
    h = await harness()
    body = notification(user_id=1, plan="start")
    async with h.client() as client:
        first, headers = await post_signed(client, body, at=NOW)
        assert (first.status_code, first.json()) == (200, {"status": "processed"})
        assert h.state() == (1, h.now + START_DAYS, "start")
        # The captured delivery, replayed as is, a minute later.
        h.clock[0] += 60
        replay = await client.post("/webhooks/upak", content=body, headers=headers)
        assert (replay.status_code, replay.json()) == (200, {"status": "duplicate"})
        # The sender's own retry: same webhook-id, fresh timestamp and signature.
        retry, _ = await post_signed(client, body, at=h.clock[0], msg_id=headers["webhook-id"])
        assert retry.json() == {"status": "duplicate"}
    assert h.state() == (1, datetime.fromtimestamp(NOW, UTC) + START_DAYS, "start")


async def test_a_replay_outside_the_tolerance_is_401(harness: MakeHarness) -> None:
    h = await harness(redis_ttl=300)
    body = notification()
    async with h.client() as client:
        first, headers = await post_signed(client, body, at=NOW)
        assert first.status_code == 200
        h.clock[0] += 301
        late = await client.post("/webhooks/upak", content=body, headers=headers)
        early, _ = await post_signed(client, notification(), at=h.clock[0] + 301)
    assert late.status_code == 401 and "seconds away" in late.json()["detail"]
    assert early.status_code == 401
    assert h.state()[0] == 1


async def test_a_new_delivery_id_for_the_same_payment_hits_the_database_guard(
    harness: MakeHarness,
) -> None:
    h = await harness()
    body = notification()
    async with h.client() as client:
        first, _ = await post_signed(client, body, at=NOW)
        second, _ = await post_signed(client, body, at=NOW)  # another webhook-id
    assert (first.json(), second.json()) == ({"status": "processed"}, {"status": "duplicate"})
    assert h.state() == (1, h.now + START_DAYS, "start")


async def test_forged_and_malformed_deliveries_use_nothing_up(harness: MakeHarness) -> None:
    h = await harness()
    body = notification()
    genuine = signed_headers(body, at=NOW, msg_id="msg_target")
    attempts = [
        {**genuine, "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
        {**genuine, "webhook-signature": "garbage"},
        {**genuine, "webhook-signature": "v1,***"},
        {**genuine, "webhook-signature": ""},
        {**genuine, "webhook-signature": "v1,QUJD " * 3000},
        {**genuine, "webhook-timestamp": "yesterday"},
        {**genuine, "webhook-timestamp": "1e10"},
        {**genuine, "webhook-timestamp": ""},
        {k: v for k, v in genuine.items() if k != "webhook-signature"},
        {k: v for k, v in genuine.items() if k != "webhook-timestamp"},
        {k: v for k, v in genuine.items() if k != "webhook-id"},
    ]
    async with h.client() as client:
        for headers in attempts:
            response = await client.post("/webhooks/upak", content=body, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["content-type"] == "application/problem+json"
        tampered = await client.post("/webhooks/upak", content=body + b" ", headers=genuine)
        assert tampered.status_code == 401
        assert h.state()[0] == 0
        # None of that claimed msg_target: the genuine delivery still goes through.
        real = await client.post("/webhooks/upak", content=body, headers=genuine)
    assert real.json() == {"status": "processed"}


@pytest.mark.parametrize(
    "body",
    [b"", b"{not json", b"[1,2]", b'{"event": 1, "object": {}}', b"\xff" * 10],
)
async def test_a_signed_malformed_body_is_400_and_claims_nothing(
    harness: MakeHarness, body: bytes
) -> None:
    h = await harness()
    async with h.client() as client:
        ts = int(NOW)
        headers = {
            "webhook-id": "msg_bad",
            "webhook-timestamp": str(ts),
            "webhook-signature": h.services.webhook_keys.sign("msg_bad", ts, body),
        }
        bad = await client.post("/webhooks/upak", content=body, headers=headers)
        assert bad.status_code == 400
        fixed, _ = await post_signed(client, notification(), at=NOW, msg_id="msg_bad")
    assert fixed.json() == {"status": "processed"}


async def test_a_body_over_64_kib_is_413(harness: MakeHarness) -> None:
    h = await harness()
    body = b'{"pad": "' + b"x" * (64 * 1024) + b'"}'
    async with h.client() as client:
        response, _ = await post_signed(client, body, at=NOW)
    assert response.status_code == 413


async def test_other_notifications_are_acknowledged_without_effect(
    harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="upak")
    h = await harness()
    bodies = [
        notification(event="payment.canceled", status="canceled"),
        notification(value="1.00"),
        notification(currency="USD"),
        notification(plan="gold"),
        notification(user_id=404),
    ]
    async with h.client() as client:
        for body in bodies:
            response, _ = await post_signed(client, body, at=NOW)
            assert response.json() == {"status": "ignored"}
    assert h.state() == (0, None, None)
    assert "names no user" in caplog.text and "price" in caplog.text


async def test_a_duplicate_while_processing_gets_409_with_retry_after(
    harness: MakeHarness,
) -> None:
    h = await harness()
    entered, leave = asyncio.Event(), asyncio.Event()

    async def slow_listener(user_id: int) -> None:  # runs inside the claim
        entered.set()
        await leave.wait()

    h.services.on_subscription_changed.append(slow_listener)
    body = notification()
    headers = signed_headers(body, at=NOW)
    async with h.client() as client:
        first = asyncio.create_task(client.post("/webhooks/upak", content=body, headers=headers))
        await entered.wait()
        busy = await client.post("/webhooks/upak", content=body, headers=headers)
        leave.set()
        done = await first
        after = await client.post("/webhooks/upak", content=body, headers=headers)
    assert busy.status_code == 409 and busy.headers["retry-after"] == "1"
    assert done.json() == {"status": "processed"}
    assert after.json() == {"status": "duplicate"}


async def test_a_failing_handler_is_503_and_the_retry_succeeds(
    harness: MakeHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = await harness()
    working = h.services.db
    from upak.domain.db import make_engine

    broken = make_engine(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db")
    h.services.db = make_sessionmaker(broken)
    body = notification()
    headers = signed_headers(body, at=NOW)
    async with h.client() as client:
        failed = await client.post("/webhooks/upak", content=body, headers=headers)
        h.services.db = working
        retried = await client.post("/webhooks/upak", content=body, headers=headers)
    await broken.dispose()
    # A database that cannot be opened is unavailable: the app's one answer for that.
    assert failed.status_code == 503 and int(failed.headers["retry-after"]) >= 1
    assert failed.json()["title"] == "Database temporarily unavailable"
    assert retried.json() == {"status": "processed"}
    assert SECRET not in caplog.text


async def test_without_a_secret_signed_webhooks_are_refused(harness: MakeHarness) -> None:
    h = await harness(webhook_secret="")
    async with h.client() as client:
        response, _ = await post_signed(client, notification(), at=NOW)
    assert response.status_code == 503


async def test_secrets_never_reach_logs_or_responses(
    harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = await harness()
    secret_b64 = SECRET.removeprefix("whsec_")
    async with h.client() as client:
        bad, _ = await post_signed(client, notification(), at=NOW, secrets=("whsec_AAAA",))
        good, _ = await post_signed(client, notification(), at=NOW)
        health = await client.get("/health")
    for text in (caplog.text, bad.text, good.text, health.text, repr(h.services)):
        assert SECRET not in text and secret_b64 not in text


async def test_during_a_redis_outage_the_gate_works_from_memory(harness: MakeHarness) -> None:
    h = await harness(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    body = notification()
    async with h.client() as client:
        first, headers = await post_signed(client, body, at=NOW)
        again = await client.post("/webhooks/upak", content=body, headers=headers)
        health = (await client.get("/health")).json()
    assert health["store"] == "memory"
    assert (first.json(), again.json()) == ({"status": "processed"}, {"status": "duplicate"})
    assert h.state()[0] == 1


# --- /webhooks/yookassa -------------------------------------------------------------------------


def test_our_networks_are_the_sdks() -> None:
    sdk = {ipaddress.ip_network(n) for n in SecurityHelper.YOOKASSA_NETWORKS}
    assert set(YOOKASSA_NETWORKS) == sdk
    assert SecurityHelper().is_ip_trusted(YOOKASSA_IP)


@pytest.mark.parametrize(
    "ip", [YOOKASSA_IP, "77.75.156.11", "2a02:5180:0:1509::17", "::ffff:185.71.77.3"]
)
async def test_yookassa_addresses_are_accepted_once(harness: MakeHarness, ip: str) -> None:
    h = await harness()
    body = notification(plan="pro", value="4900.00")
    async with h.client(ip) as client:
        first = await client.post("/webhooks/yookassa", content=body)
        again = await client.post("/webhooks/yookassa", content=body)
    assert (first.json(), again.json()) == ({"status": "processed"}, {"status": "duplicate"})
    assert h.state() == (1, h.now + timedelta(days=365), "pro")


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted"),
    [
        ("203.0.113.9", None, ""),  # directly, from elsewhere
        ("127.0.0.1", None, ""),  # localhost is not YooKassa either
        ("203.0.113.9", YOOKASSA_IP, ""),  # a forged header from an untrusted peer
        ("127.0.0.1", YOOKASSA_IP, ""),  # no TRUSTED_PROXIES: the header is not believed
        ("127.0.0.1", f"{YOOKASSA_IP}, 203.0.113.9", "127.0.0.1"),  # attacker prepended it
        ("127.0.0.1", "garbage", "127.0.0.1"),
    ],
)
async def test_anyone_else_is_403_and_nothing_happens(
    harness: MakeHarness, peer: str, forwarded: str | None, trusted: str
) -> None:
    h = await harness(trusted_proxies=trusted)
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    async with h.client(peer) as client:
        response = await client.post("/webhooks/yookassa", content=notification(), headers=headers)
    assert response.status_code == 403
    assert h.state() == (0, None, None)


async def test_behind_a_trusted_proxy_the_forwarded_address_counts(harness: MakeHarness) -> None:
    h = await harness(trusted_proxies="127.0.0.1, 10.0.0.0/8")
    headers = {"x-forwarded-for": f"{YOOKASSA_IP}, 10.1.2.3"}
    async with h.client("127.0.0.1") as client:
        response = await client.post("/webhooks/yookassa", content=notification(), headers=headers)
    assert response.json() == {"status": "processed"}


async def test_yookassa_allowed_ips_replaces_the_list(harness: MakeHarness) -> None:
    h = await harness(yookassa_allowed_ips="127.0.0.1/32,::1")
    async with h.client("127.0.0.1") as client:
        ok = await client.post("/webhooks/yookassa", content=notification())
    async with h.client(YOOKASSA_IP) as client:
        refused = await client.post("/webhooks/yookassa", content=notification())
    assert ok.json() == {"status": "processed"} and refused.status_code == 403


async def test_yookassa_deduplicates_on_event_object_and_status(harness: MakeHarness) -> None:
    h = await harness()
    waiting = notification(
        payment_id="pay-1", event="payment.waiting_for_capture", status="waiting_for_capture"
    )
    succeeded = notification(payment_id="pay-1")
    async with h.client(YOOKASSA_IP) as client:
        statuses = [
            (await client.post("/webhooks/yookassa", content=body)).json()["status"]
            for body in (waiting, succeeded, waiting, succeeded)
        ]
    assert statuses == ["ignored", "processed", "duplicate", "duplicate"]
    assert h.state()[0] == 1


@pytest.mark.parametrize("body", [b"", b"nope", b"[]", b'{"event": "x", "object": {"id": 5}}'])
async def test_yookassa_malformed_bodies_are_400(harness: MakeHarness, body: bytes) -> None:
    h = await harness()
    async with h.client(YOOKASSA_IP) as client:
        response = await client.post("/webhooks/yookassa", content=body)
    assert response.status_code == 400


async def test_one_payment_through_both_doors_takes_effect_once(harness: MakeHarness) -> None:
    h = await harness()
    body = notification()
    async with h.client(YOOKASSA_IP) as client:
        direct = await client.post("/webhooks/yookassa", content=body)
        relayed, _ = await post_signed(client, body, at=NOW)
    assert (direct.json(), relayed.json()) == ({"status": "processed"}, {"status": "duplicate"})
    assert h.state() == (1, h.now + START_DAYS, "start")


# --- /payments ----------------------------------------------------------------------------------


async def test_payments_are_the_signed_in_users_own(harness: MakeHarness) -> None:
    h = await harness()
    async with h.client(YOOKASSA_IP) as client:
        assert (await client.get("/payments")).status_code == 401
        await client.post("/webhooks/yookassa", content=notification(user_id=1, payment_id="p1"))
        await client.post("/webhooks/yookassa", content=notification(user_id=2, payment_id="p2"))
        h.app.dependency_overrides[current_user_id] = lambda: 1
        mine = (await client.get("/payments")).json()
    assert len(mine) == 1
    assert mine[0]["plan"] == "start" and mine[0]["status"] == "succeeded"
    assert mine[0]["amount"] == {"value": "490.00", "currency": "RUB"}
    assert mine[0]["provider_payment_id"] == "p1"
    assert set(mine[0]) == {"id", "provider_payment_id", "plan", "amount", "status", "created_at"}

"""Payments end to end against a local stand-in of YooKassa's API (tests/support/yookassa_api):
checkout, the buyer paying, the notification, confirmation with the API, refunds, faults."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.support.redis_servers import RedisServer, free_port
from tests.support.webhooks import (
    SECRET,
    YOOKASSA_IP,
    Harness,
    harnesses,
    notification,
    signed_headers,
)
from tests.support.yookassa_api import SECRET_KEY, SHOP_ID, StandIn, yookassa_stand_in
from upak.web.routes.payments import current_user_id

NOW = time.time()
RETURN_URL = "https://upak.example/paid"
Shop = Harness
MakeShop = Callable[..., Awaitable[Harness]]


@pytest.fixture(scope="module")
def stand_in_server() -> Iterator[StandIn]:
    with yookassa_stand_in() as server:
        yield server


@pytest.fixture
def api(stand_in_server: StandIn) -> StandIn:
    stand_in_server.reset()
    return stand_in_server


@pytest.fixture
async def shop(
    tmp_path: Path, shared_redis: RedisServer, key_prefix: str, api: StandIn
) -> AsyncIterator[MakeShop]:
    """Apps configured for the stand-in's shop; the signed-in user is `user` (1 unless set)."""
    settings = {
        "redis_url": shared_redis.url,
        "redis_key_prefix": key_prefix,
        "yookassa_api_url": api.url,
        "yookassa_shop_id": SHOP_ID,
        "yookassa_secret_key": SECRET_KEY,
        "yookassa_timeout": 3,
        "webhook_secret": SECRET,
    }
    async with harnesses(tmp_path, NOW, **settings) as build:

        async def build_shop(**overrides) -> Shop:
            made = await build(**overrides)
            made.user = 1  # type: ignore[attr-defined]
            made.app.dependency_overrides[current_user_id] = lambda: made.user
            return made

        yield build_shop


async def checkout(client: httpx.AsyncClient, plan: str = "start", **headers: str):
    return await client.post(
        "/payments", json={"plan": plan, "return_url": RETURN_URL}, headers=headers
    )


def notify(client: httpx.AsyncClient, body: bytes):
    return client.post("/webhooks/yookassa", content=body)


# --- checkout -> payment -> notification -> subscription ------------------------------------


async def test_checkout_payment_notification_subscription(shop: MakeShop, api: StandIn) -> None:
    s = await shop()
    async with s.client(YOOKASSA_IP) as client:
        created = await checkout(client)
        assert created.status_code == 201, created.text
        body = created.json()
        assert set(body) == {"id", "status", "confirmation_url", "plan", "amount"}
        assert body["status"] == "pending" and body["plan"] == "start"
        assert body["amount"] == {"value": "490.00", "currency": "RUB"}
        assert body["confirmation_url"].startswith("https://yoomoney.ru/checkout/")
        listed = (await client.get("/payments")).json()
        assert [(p["provider_payment_id"], p["status"]) for p in listed] == [
            (body["id"], "pending")
        ]
        # What YooKassa was asked for (the stand-in checked it with the SDK's PaymentRequest).
        upstream = api.payments[body["id"]]
        assert upstream["metadata"] == {"user_id": "1", "plan": "start"}
        assert upstream["confirmation"]["return_url"] == RETURN_URL
        assert upstream["amount"] == {"value": "490.00", "currency": "RUB"}

        api.succeed(body["id"])  # the buyer pays
        answered = await notify(client, api.notification(body["id"]))
        assert answered.json() == {"status": "processed"}
        again = await notify(client, api.notification(body["id"]))
        assert again.json() == {"status": "duplicate"}
        listed = (await client.get("/payments")).json()
    assert [p["status"] for p in listed] == ["succeeded"]
    assert s.state() == (1, s.now + timedelta(days=30), "start")
    assert ("GET", f"/v3/payments/{body['id']}") in api.requests


async def test_a_repeated_idempotency_key_makes_one_upstream_payment(
    shop: MakeShop, api: StandIn
) -> None:
    s = await shop()
    async with s.client(YOOKASSA_IP) as client:
        first = await checkout(client, **{"Idempotency-Key": "order-17"})
        second = await checkout(client, **{"Idempotency-Key": "order-17"})
        other_body = await checkout(client, "pro", **{"Idempotency-Key": "order-17"})
        s.user = 2  # keys are per user: another user's "order-17" is another payment
        theirs = await checkout(client, **{"Idempotency-Key": "order-17"})
        bad_key = await checkout(client, **{"Idempotency-Key": "no spaces allowed"})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert other_body.status_code == 422
    assert other_body.headers["content-type"] == "application/problem+json"
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    assert bad_key.status_code == 400
    assert api.created == 2
    assert len(s.statuses()) == 2


async def test_concurrent_requests_with_one_key_make_one_payment(
    shop: MakeShop, api: StandIn
) -> None:
    s = await shop()
    async with s.client(YOOKASSA_IP) as client:
        answers = await asyncio.gather(
            *(checkout(client, **{"Idempotency-Key": "double-click"}) for _ in range(6))
        )
        after = await checkout(client, **{"Idempotency-Key": "double-click"})
    created = [a.json()["id"] for a in answers if a.status_code == 201]
    busy = [a for a in answers if a.status_code == 409]
    assert created and len(created) + len(busy) == 6
    assert all(b.headers["retry-after"] == "1" for b in busy)
    assert set(created) == {after.json()["id"]} and api.created == 1


async def test_idempotency_keys_survive_a_redis_outage_in_memory(
    shop: MakeShop, api: StandIn
) -> None:
    s = await shop(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with s.client(YOOKASSA_IP) as client:
        first = await checkout(client, **{"Idempotency-Key": "k1"})
        second = await checkout(client, **{"Idempotency-Key": "k1"})
        health = (await client.get("/health")).json()
    assert health["store"] == "memory"
    assert first.json() == second.json() and api.created == 1


async def test_checkout_needs_a_login_a_plan_and_an_https_return_url(shop: MakeShop) -> None:
    s = await shop()
    async with s.client(YOOKASSA_IP) as client:
        bad = [
            await client.post("/payments", json={"plan": "gold", "return_url": RETURN_URL}),
            await client.post("/payments", json={"plan": "start", "return_url": "http://x.io"}),
            await client.post("/payments", json={"plan": "start"}),
            await client.post(
                "/payments", content=b"{nope", headers={"content-type": "application/json"}
            ),
        ]
        s.app.dependency_overrides.clear()
        anonymous = await checkout(client)
    assert [r.status_code for r in bad] == [422, 422, 422, 400]
    assert anonymous.status_code == 401
    assert s.statuses() == {}


async def test_without_credentials_checkout_is_503(shop: MakeShop) -> None:
    s = await shop(yookassa_shop_id="", yookassa_secret_key="")
    async with s.client(YOOKASSA_IP) as client:
        response = await checkout(client)
    assert response.status_code == 503 and "Retry-After" in response.headers


# --- notifications are hints ----------------------------------------------------------------


async def test_a_forged_notification_for_an_unknown_or_pending_payment_changes_nothing(
    shop: MakeShop, api: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="upak")
    s = await shop()
    async with s.client(YOOKASSA_IP) as client:
        unknown = await notify(client, notification(payment_id="2f9b0c6e-forged"))
        pending_id = (await checkout(client)).json()["id"]
        forged = api.notification(pending_id, status="succeeded", paid=True)
        still_pending = await notify(client, forged)
    assert unknown.json() == still_pending.json() == {"status": "ignored"}
    assert s.state() == (1, None, None)  # the pending checkout row only
    assert s.statuses() == {pending_id: "pending"}
    assert "does not know this payment" in caplog.text
    assert "'pending' at YooKassa" in caplog.text


async def test_a_notification_that_disagrees_with_the_api_is_applied_as_the_api_says(
    shop: MakeShop, api: StandIn
) -> None:
    s = await shop()
    payment_id = api.add_payment(user_id=1, plan="start", value="490.00")
    lie = api.notification(
        payment_id,
        metadata={"user_id": "2", "plan": "pro"},
        amount={"value": "4900.00", "currency": "RUB"},
    )
    async with s.client(YOOKASSA_IP) as client:
        response = await notify(client, lie)
    assert response.json() == {"status": "processed"}
    assert s.state(1) == (1, s.now + timedelta(days=30), "start")
    assert s.state(2)[1:] == (None, None)


async def test_a_canceled_payment_is_marked_canceled(shop: MakeShop, api: StandIn) -> None:
    s = await shop()
    async with s.client(YOOKASSA_IP) as client:
        payment_id = (await checkout(client)).json()["id"]
        api.cancel(payment_id)
        response = await notify(client, api.notification(payment_id))
        listed = (await client.get("/payments")).json()
    assert response.json() == {"status": "processed"}
    assert [p["status"] for p in listed] == ["canceled"]
    assert s.state()[1:] == (None, None)


# --- refunds ----------------------------------------------------------------------------------


async def test_a_refund_removes_the_period_once_even_notified_twice(
    shop: MakeShop, api: StandIn
) -> None:
    s = await shop()
    async with s.client(YOOKASSA_IP) as client:
        kept = api.add_payment(user_id=1, plan="start", value="490.00")
        await notify(client, api.notification(kept))
        refunded = api.add_payment(user_id=1, plan="start", value="490.00")
        await notify(client, api.notification(refunded))
        assert s.state()[1] == s.now + timedelta(days=60)

        partial = api.refund(kept, "100.00")
        assert (await notify(client, api.refund_notification(partial))).json() == {
            "status": "ignored"
        }
        refund_id = api.refund(refunded)
        body = api.refund_notification(refund_id)
        first = await notify(client, body)
        again = await notify(client, body)  # the replay gate's answer
        # The same refund relayed through the signed door: past the gate, the database's turn.
        relayed = await client.post(
            "/webhooks/upak", content=body, headers=signed_headers(body, at=NOW)
        )
        listed = {
            p["provider_payment_id"]: p["status"] for p in (await client.get("/payments")).json()
        }
    assert first.json() == {"status": "processed"}
    assert again.json() == relayed.json() == {"status": "duplicate"}
    assert s.state()[1] == datetime.fromtimestamp(NOW, UTC) + timedelta(days=30)
    assert listed == {kept: "succeeded", refunded: "refunded"}


async def test_an_unknown_refund_changes_nothing(shop: MakeShop, api: StandIn) -> None:
    s = await shop()
    async with s.client(YOOKASSA_IP) as client:
        paid = api.add_payment(user_id=1, plan="start", value="490.00")
        await notify(client, api.notification(paid))
        refund_id = api.refund(paid)
        body = api.refund_notification(refund_id)
        del api.refunds[refund_id]  # a forged refund notification
        response = await notify(client, body)
    assert response.json() == {"status": "ignored"}
    assert s.state()[1] == s.now + timedelta(days=30)


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["down", "slow", "500", "401"])
async def test_api_faults_are_503_and_nothing_is_applied(
    shop: MakeShop, api: StandIn, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = {"yookassa_timeout": 0.5}
    if fault == "down":
        overrides["yookassa_api_url"] = f"http://127.0.0.1:{free_port()}/v3"
    s = await shop(**overrides)
    paid = api.add_payment(user_id=1, plan="start", value="490.00")
    if fault != "down":
        api.fault, api.hang_seconds = fault, 5.0  # type: ignore[assignment]
    async with s.client(YOOKASSA_IP) as client:
        started = time.monotonic()
        refused = await checkout(client, **{"Idempotency-Key": "during-fault"})
        took = time.monotonic() - started
        unconfirmed = await notify(client, api.notification(paid))
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert refused.headers["content-type"] == "application/problem+json"
        assert unconfirmed.status_code == 503 and "retry-after" in unconfirmed.headers
        assert took < 3  # the deadline held (0.5 s, a loaded machine allowed for)
        assert s.state() == (0, None, None) and api.created == 0
        if fault != "down":  # the fault passes: the same key and YooKassa's retry go through
            api.fault = None
            retried = await checkout(client, **{"Idempotency-Key": "during-fault"})
            confirmed = await notify(client, api.notification(paid))
            assert retried.status_code == 201 and confirmed.json() == {"status": "processed"}
            assert s.state()[1] == s.now + timedelta(days=30)
    assert SECRET_KEY not in caplog.text and SECRET_KEY not in refused.text


async def test_secrets_never_reach_reprs_or_logs(
    shop: MakeShop, api: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = await shop()
    api.fault = "401"
    async with s.client(YOOKASSA_IP) as client:
        response = await checkout(client)
    for text in (repr(s.services.yookassa), repr(s.services.settings), caplog.text, response.text):
        assert SECRET_KEY not in text
    assert "YOOKASSA_SECRET_KEY" in caplog.text  # the log says what to check


# --- production -------------------------------------------------------------------------------


async def test_test_payments_are_refused_in_production(
    shop: MakeShop, api: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="upak")
    s = await shop(upak_env="production")
    paid = api.add_payment(user_id=1, plan="start", value="490.00")  # the stand-in's are test
    async with s.client(YOOKASSA_IP) as client:
        response = await notify(client, api.notification(paid))
    assert response.json() == {"status": "ignored"}
    assert s.state() == (0, None, None)
    assert "test payment is refused in production" in caplog.text


async def test_production_without_credentials_warns_loudly(
    shop: MakeShop, caplog: pytest.LogCaptureFixture
) -> None:
    await shop(upak_env="production", yookassa_shop_id="", yookassa_secret_key="")
    assert "PRODUCTION WITHOUT YOOKASSA CREDENTIALS" in caplog.text


# --- reconciliation ---------------------------------------------------------------------------


async def test_reconcile_applies_a_payment_whose_notification_never_came(
    shop: MakeShop, api: StandIn, monkeypatch: pytest.MonkeyPatch, shared_redis: RedisServer
) -> None:
    from upak.cli import app as cli

    s = await shop()
    s.clock[0] = time.time() - 600  # the checkouts were ten minutes ago
    async with s.client(YOOKASSA_IP) as client:
        paid = (await checkout(client)).json()["id"]
        canceled = (await checkout(client, "pro")).json()["id"]
        waiting = (await checkout(client)).json()["id"]
    api.succeed(paid)
    api.cancel(canceled)
    for name, value in {
        "DATABASE_URL": f"sqlite+aiosqlite:///{s.db_path}",
        "REDIS_URL": shared_redis.url,
        "YOOKASSA_API_URL": api.url,
        "YOOKASSA_SHOP_ID": SHOP_ID,
        "YOOKASSA_SECRET_KEY": SECRET_KEY,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(s.db_path.rsplit("/", 1)[0])  # no developer .env

    def run(*args: str):  # the CLI runs its own event loop: in a thread of its own here
        return asyncio.to_thread(CliRunner().invoke, cli, ["payments", "reconcile", *args])

    recent = await run("--older-than", "3600")
    assert recent.exit_code == 0 and "reconciled 0" in recent.output, recent.output
    first = await run()
    second = await run()
    assert first.exit_code == 0, first.output
    assert "reconciled 3" in first.output and "1 succeeded" in first.output
    assert "1 canceled" in first.output
    assert second.exit_code == 0 and "reconciled 1" in second.output  # only `waiting` is left
    assert s.statuses() == {paid: "succeeded", canceled: "canceled", waiting: "pending"}
    assert s.state()[1] is not None and s.state()[2] == "start"

    api.fault = "500"
    failed = await run()
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert "YooKassa answered 500" in failed.output and SECRET_KEY not in failed.output


def test_reconcile_without_credentials_is_one_line(monkeypatch, tmp_path: Path) -> None:
    from upak.cli import app as cli

    monkeypatch.chdir(tmp_path)
    for name in ("YOOKASSA_SHOP_ID", "YOOKASSA_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli, ["payments", "reconcile"])
    assert result.exit_code == 2 and "YOOKASSA_SHOP_ID" in result.output


# --- the SDK as the oracle --------------------------------------------------------------------


def test_our_request_body_is_accepted_by_the_sdks_payment_request() -> None:
    from yookassa.domain.request import PaymentRequest

    from upak.domain.yookassa_api import CheckoutRequest

    body = CheckoutRequest(Decimal("490.00"), "RUB", "UPAK Start", 1, "start", RETURN_URL).body()
    request = PaymentRequest(body)
    request.validate()
    assert dict(request)["confirmation"] == {"type": "redirect", "return_url": RETURN_URL}
    assert request.capture is True and request.metadata == {"user_id": "1", "plan": "start"}


def test_responses_built_with_the_sdks_models_are_read() -> None:
    from yookassa.domain.response import PaymentResponse, RefundResponse

    from upak.domain.yookassa_api import read_payment, read_refund

    payment = PaymentResponse(
        {
            "id": "22e12f66-000f-5000-8000-18db351245c7",
            "status": "succeeded",
            "paid": True,
            "amount": {"value": "4900.00", "currency": "RUB"},
            "created_at": "2024-05-01T10:00:00.000Z",
            "metadata": {"user_id": "7", "plan": "pro"},
            "recipient": {"account_id": "100500", "gateway_id": "100700"},
            "refundable": True,
            "test": False,
        }
    )
    read = read_payment(dict(payment))
    assert (read.status, read.amount, read.currency, read.test) == (
        "succeeded",
        Decimal("4900.00"),
        "RUB",
        False,
    )
    assert (read.user_id, read.plan) == ("7", "pro")
    refund = RefundResponse(
        {
            "id": "216749f7-0016-50be-b000-078d43a63ae4",
            "payment_id": read.id,
            "status": "succeeded",
            "amount": {"value": "4900.00", "currency": "RUB"},
            "created_at": "2024-05-02T10:00:00.000Z",
        }
    )
    assert read_refund(dict(refund)).payment_id == read.id

"""Plans, notifications and the payment service, on SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from yookassa.domain.notification import WebhookNotificationFactory

import upak.domain.billing as billing_module
from tests.support.webhooks import notification
from upak.domain.billing import (
    PLANS,
    MalformedNotification,
    Payment,
    PaymentOutcome,
    apply_payment,
    parse_notification,
    payments_of,
)
from upak.domain.db import Base
from upak.domain.models import User

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def _postgres_reachable() -> bool:
    engine = create_async_engine(PG_URL)
    try:
        async with asyncio.timeout(3), engine.connect() as conn:
            await conn.execute(text("select 1"))
        return True
    except Exception:
        return False
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator:
    """A sessionmaker on an empty schema with users 1 and 2."""
    schema = None
    if request.param == "sqlite":
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}")
    else:
        if not await _postgres_reachable():
            pytest.skip("PostgreSQL on 127.0.0.1:5432 (db test) is not reachable")
        # A schema of this test's own: other suites share the database.
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_async_engine(PG_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await admin.dispose()
        engine = create_async_engine(
            PG_URL, connect_args={"server_settings": {"search_path": schema}}
        )
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        session.add_all([User(id=1, email="a@x.io", password_hash="h"),
                         User(id=2, email="b@x.io", password_hash="h")])  # fmt: skip
        await session.commit()
    try:
        yield sessions
    finally:
        await engine.dispose()
        if schema:
            admin = create_async_engine(PG_URL)
            async with admin.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            await admin.dispose()


async def user_state(sessions: async_sessionmaker[AsyncSession], user_id: int = 1):
    async with sessions() as session:
        user = await session.get(User, user_id)
        assert user is not None
        expires = user.subscription_expires_at
        return user.plan, billing_module.as_utc(expires) if expires else None


def paid(**kwargs) -> billing_module.Notification:
    return parse_notification(notification(**kwargs))


# --- plans and notifications ----------------------------------------------------------------


def test_plans_have_a_price_in_rub_and_a_period() -> None:
    assert set(PLANS) == {"start", "pro"}
    for plan in PLANS.values():
        shown = plan.as_json()
        assert shown["price"]["currency"] == "RUB"
        assert Decimal(shown["price"]["value"]) == plan.price
        assert shown["period_days"] > 0


def test_reads_what_the_sdk_lays_out() -> None:
    body = notification(user_id=7, plan="pro", value="4900.00", payment_id="pay-1")
    sdk = WebhookNotificationFactory().create(json.loads(body))  # the SDK reads it back too
    parsed = parse_notification(body)
    assert parsed.event == sdk.event == "payment.succeeded"
    assert parsed.object_id == sdk.object.id == "pay-1"
    assert parsed.status == sdk.object.status == "succeeded"
    assert parsed.amount == Decimal("4900.00") and parsed.currency == "RUB"
    assert (parsed.user_id, parsed.plan) == ("7", "pro")


BAD_BODIES = [
    b"",
    b"not json",
    b"\xff\xfe",
    b"[]",
    b'"text"',
    b'{"type": "notification"}',
    b'{"type": "other", "event": "payment.succeeded", "object": {"id": "1", "status": "s"}}',
    b'{"event": 5, "object": {"id": "1", "status": "succeeded"}}',
    b'{"event": "payment.succeeded", "object": []}',
    b'{"event": "payment.succeeded", "object": {"id": 1, "status": "succeeded"}}',
    b'{"event": "payment.succeeded", "object": {"id": "1"}}',
    b'{"event": "payment.succeeded", "object": {"id": "' + b"x" * 65 + b'", "status": "s"}}',
    b'{"event": "e", "object": {"id": "1", "status": "s", "amount": "490"}}',
    b'{"event": "e", "object": {"id": "1", "status": "s", "amount": {"value": 490, '
    b'"currency": "RUB"}}}',
    b'{"event": "e", "object": {"id": "1", "status": "s", "amount": {"value": "4x", '
    b'"currency": "RUB"}}}',
    b'{"event": "e", "object": {"id": "1", "status": "s", "amount": {"value": "NaN", '
    b'"currency": "RUB"}}}',
    b'{"event": "e", "object": {"id": "1", "status": "s", "metadata": ["user"]}}',
    b'{"event": "e", "object": {"id": "1", "status": "s", "metadata": {"user_id": 1}}}',
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_malformed_notifications_say_what_is_wrong(body: bytes) -> None:
    with pytest.raises(MalformedNotification):
        parse_notification(body)


# --- the effect ---------------------------------------------------------------------------------


async def test_a_payment_starts_a_subscription_from_now(db) -> None:
    result = await apply_payment(db, paid(user_id=1, plan="start"), now=NOW)
    assert result.outcome is PaymentOutcome.PROCESSED
    assert await user_state(db) == ("start", NOW + timedelta(days=30))
    [payment] = await payments_of(db, 1)
    shown = payment.as_json()
    assert shown["plan"] == "start" and shown["status"] == "succeeded"
    assert shown["amount"] == {"value": "490.00", "currency": "RUB"}
    assert datetime.fromisoformat(shown["created_at"]) == NOW


async def test_a_payment_extends_from_the_current_expiry(db) -> None:
    await apply_payment(db, paid(plan="start"), now=NOW)
    await apply_payment(db, paid(plan="pro", value="4900"), now=NOW + timedelta(days=1))
    assert await user_state(db) == ("pro", NOW + timedelta(days=30 + 365))
    assert len(await payments_of(db, 1)) == 2


async def test_an_expired_subscription_restarts_from_now(db) -> None:
    await apply_payment(db, paid(plan="start"), now=NOW)
    later = NOW + timedelta(days=100)
    await apply_payment(db, paid(plan="start"), now=later)
    assert await user_state(db) == ("start", later + timedelta(days=30))


async def test_the_same_payment_twice_is_a_duplicate(db) -> None:
    body = paid(payment_id="pay-twice")
    first = await apply_payment(db, body, now=NOW)
    second = await apply_payment(db, body, now=NOW + timedelta(hours=1))
    assert (first.outcome, second.outcome) == (PaymentOutcome.PROCESSED, PaymentOutcome.DUPLICATE)
    assert await user_state(db) == ("start", NOW + timedelta(days=30))
    assert len(await payments_of(db, 1)) == 1


async def test_concurrent_applications_of_one_payment_take_effect_once(db) -> None:
    body = paid(payment_id="pay-race")
    results = await asyncio.gather(*(apply_payment(db, body, now=NOW) for _ in range(10)))
    outcomes = [r.outcome for r in results]
    assert outcomes.count(PaymentOutcome.PROCESSED) == 1
    assert outcomes.count(PaymentOutcome.DUPLICATE) == 9
    assert await user_state(db) == ("start", NOW + timedelta(days=30))


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"event": "payment.canceled", "status": "canceled"}, "does not activate"),
        ({"event": "payment.waiting_for_capture", "status": "waiting_for_capture"}, "activate"),
        ({"status": "pending"}, "status"),
        ({"plan": "platinum"}, "plan"),
        ({"value": "489.99"}, "price"),
        ({"value": "4900.00"}, "price"),
        ({"currency": "USD"}, "price"),
        ({"user_id": "abc"}, "user_id"),
        ({"user_id": "-1"}, "user_id"),
        ({"user_id": "9" * 40}, "user_id"),
        ({"user_id": 999}, "names no user"),
    ],
)
async def test_anything_else_is_ignored_without_effect(db, kwargs, reason: str) -> None:
    result = await apply_payment(db, paid(**kwargs), now=NOW)
    assert result.outcome is PaymentOutcome.IGNORED
    assert reason in result.reason
    assert await user_state(db) == (None, None)
    async with db() as session:
        assert (await session.execute(text("select count(*) from payments"))).scalar() == 0


async def test_listeners_hear_of_the_change_once_and_cannot_break_it(db, caplog) -> None:
    heard: list[int] = []

    async def listener(user_id: int) -> None:
        heard.append(user_id)

    async def broken(user_id: int) -> None:
        raise RuntimeError("cache down")

    body = paid(user_id=2)
    hooks = [broken, listener]
    first = await apply_payment(db, body, now=NOW, on_subscription_changed=hooks)
    await apply_payment(db, body, now=NOW, on_subscription_changed=hooks)
    await apply_payment(db, paid(value="1"), now=NOW, on_subscription_changed=hooks)
    assert first.outcome is PaymentOutcome.PROCESSED
    assert heard == [2]
    assert "listener failed for user 2" in caplog.text


async def test_payments_are_listed_per_user_newest_first(db) -> None:
    await apply_payment(db, paid(user_id=1, payment_id="old"), now=NOW)
    await apply_payment(db, paid(user_id=1, payment_id="new"), now=NOW + timedelta(days=1))
    await apply_payment(db, paid(user_id=2, payment_id="theirs"), now=NOW)
    mine = await payments_of(db, 1)
    assert [p.provider_payment_id for p in mine] == ["new", "old"]
    assert await payments_of(db, 3) == []


# --- the migration --------------------------------------------------------------------------------


def _load_migration(name: str = "0002_payments"):
    path = Path(billing_module.__file__).parent / "migrations" / "versions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"migration_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_migrations_build_the_models_table_and_undo_it(tmp_path: Path) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from sqlalchemy import create_engine

    migration = _load_migration()
    lifecycle = _load_migration("0004_payment_lifecycle")
    assert (migration.revision, migration.down_revision) == ("0002_payments", "0001_users")
    assert lifecycle.down_revision == "0003_email_keys"
    migrated = create_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    modelled = create_engine(f"sqlite:///{tmp_path / 'modelled.db'}")
    User.__table__.create(migrated)
    with migrated.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        migration.upgrade()
        lifecycle.upgrade()
    Base.metadata.create_all(modelled, tables=[User.__table__, Payment.__table__])

    def describe(engine):
        inspector = inspect(engine)
        columns = {
            c["name"]: (str(c["type"]), c["nullable"]) for c in inspector.get_columns("payments")
        }
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("payments")}
        indexes = {tuple(i["column_names"]) for i in inspector.get_indexes("payments")}
        return columns, uniques, indexes

    assert describe(migrated) == describe(modelled)
    with migrated.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        lifecycle.downgrade()
        migration.downgrade()
    assert "payments" not in inspect(migrated).get_table_names()
    migrated.dispose()
    modelled.dispose()


# --- user ids and locks ---------------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["٣", "²", "\uff11", "3\u0663", " 1", "1\n"])
async def test_metadata_user_id_ascii_digits_only(db, user_id: str) -> None:
    """Arabic-Indic "٣" once credited user 3; superscript "²" crashed int() into a 503 loop."""
    result = await apply_payment(db, paid(user_id=user_id), now=NOW)
    assert result.outcome is PaymentOutcome.IGNORED
    assert "ASCII digits" in result.reason
    assert await user_state(db) == (None, None)
    assert (await apply_payment(db, paid(user_id="1"), now=NOW)).outcome is PaymentOutcome.PROCESSED

"""Plans, payments, and what a successful payment does to a subscription.

A YooKassa `payment.succeeded` notification for one of our plans, at exactly that plan's price,
extends the paying user's subscription by the plan's period from max(now, current expiry) and
records the payment. Everything else is acknowledged without effect (`IGNORED`, with a reason
for the log). The payments table is unique on (provider, provider payment id): whatever the
replay gate lets through twice, the second insert fails and changes nothing.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, String, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from upak.domain.db import Base
from upak.domain.models import User

log = logging.getLogger("upak.billing")

PROVIDER_YOOKASSA = "yookassa"
SUCCEEDED_EVENT = "payment.succeeded"

# Called with the user's id after their subscription changed (e.g. to drop a cached /me).
SubscriptionHook = Callable[[int], Awaitable[None]]


# --- plans -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    id: str
    title: str
    price: Decimal
    currency: str
    period_days: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "price": {"value": f"{self.price:.2f}", "currency": self.currency},
            "period_days": self.period_days,
        }


PLANS: dict[str, Plan] = {
    plan.id: plan
    for plan in (
        Plan("start", "Start", Decimal("490.00"), "RUB", 30),
        Plan("pro", "Pro", Decimal("4900.00"), "RUB", 365),
    )
}


# --- payments --------------------------------------------------------------------------------


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        UniqueConstraint("provider", "provider_payment_id", name="uq_payments_provider_payment"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(32))
    provider_payment_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    plan: Mapped[str] = mapped_column(String(32))
    # Minor units (kopecks): exact on every database, no Decimal-on-SQLite caveats.
    amount_minor: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "plan": self.plan,
            "amount": {"value": minor_to_text(self.amount_minor), "currency": self.currency},
            "status": self.status,
            "created_at": as_utc(self.created_at).isoformat(),
        }

    def __repr__(self) -> str:
        return f"Payment(id={self.id}, provider={self.provider!r})"


def minor_to_text(amount_minor: int) -> str:
    return f"{Decimal(amount_minor) / 100:.2f}"


def as_utc(moment: datetime) -> datetime:
    """SQLite hands timezone-aware columns back naive; they were written in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --- notifications ---------------------------------------------------------------------------


class MalformedNotification(ValueError):
    """The body is not a YooKassa notification we can read (a 400). Says what is wrong."""


@dataclass(frozen=True)
class Notification:
    """The parts of a YooKassa notification (`{"type", "event", "object": payment}`) we use."""

    event: str
    object_id: str
    status: str
    amount: Decimal | None = None
    currency: str | None = None
    user_id: str | None = None
    plan: str | None = None


def _text(
    container: dict[str, Any], name: str, where: str, *, required: bool, limit: int = 128
) -> str | None:
    value = container.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise MalformedNotification(
            f"{where}{name} must be a non-empty string of at most {limit} characters"
        )
    return value


def parse_notification(body: bytes) -> Notification:
    """Read the notification JSON strictly enough that nothing later meets a wrong type."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise MalformedNotification("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedNotification("the body must be a JSON object")
    kind = data.get("type", "notification")
    if kind != "notification":
        raise MalformedNotification('type must be "notification"')
    event = _text(data, "event", "", required=True)
    obj = data.get("object")
    if not isinstance(obj, dict):
        raise MalformedNotification("object must be a JSON object")
    object_id = _text(obj, "id", "object.", required=True, limit=64)
    status = _text(obj, "status", "object.", required=True)
    amount = currency = None
    if obj.get("amount") is not None:
        raw = obj["amount"]
        if not isinstance(raw, dict):
            raise MalformedNotification("object.amount must be a JSON object")
        value = _text(raw, "value", "object.amount.", required=True)
        currency = _text(raw, "currency", "object.amount.", required=True)
        try:
            amount = Decimal(value or "")
        except InvalidOperation:
            raise MalformedNotification("object.amount.value must be a decimal number") from None
        if not amount.is_finite():
            raise MalformedNotification("object.amount.value must be a decimal number")
    user_id = plan = None
    if obj.get("metadata") is not None:
        metadata = obj["metadata"]
        if not isinstance(metadata, dict):
            raise MalformedNotification("object.metadata must be a JSON object")
        user_id = _text(metadata, "user_id", "object.metadata.", required=False)
        plan = _text(metadata, "plan", "object.metadata.", required=False)
    assert event is not None and object_id is not None and status is not None
    return Notification(event, object_id, status, amount, currency, user_id, plan)


# --- the effect ------------------------------------------------------------------------------


class PaymentOutcome(enum.StrEnum):
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


@dataclass(frozen=True)
class PaymentResult:
    outcome: PaymentOutcome
    reason: str = ""
    user_id: int | None = None
    expires_at: datetime | None = None


def _why_not(notification: Notification) -> str | None:
    """Why this notification must not touch a subscription, or None if it may."""
    if notification.event != SUCCEEDED_EVENT:
        return f"event {notification.event!r} does not activate anything"
    if notification.status != "succeeded":
        return f"payment status is {notification.status!r}"
    plan = PLANS.get(notification.plan or "")
    if plan is None:
        return "metadata.plan names no plan"
    if notification.amount is None or notification.currency is None:
        return "the payment has no amount"
    if notification.amount != plan.price or notification.currency != plan.currency:
        return f"the amount is not the price of plan {plan.id!r}"
    if not (notification.user_id or "").isdigit() or len(notification.user_id or "") > 18:
        return "metadata.user_id is not a user id"
    return None


async def apply_payment(
    sessions: async_sessionmaker[AsyncSession],
    notification: Notification,
    *,
    now: datetime,
    provider: str = PROVIDER_YOOKASSA,
    on_subscription_changed: Sequence[SubscriptionHook] = (),
) -> PaymentResult:
    """Record a successful payment and extend the subscription, exactly once per payment."""
    reason = _why_not(notification)
    if reason is not None:
        return PaymentResult(PaymentOutcome.IGNORED, reason)
    plan = PLANS[notification.plan or ""]
    user_id = int(notification.user_id or "")
    async with sessions() as session:
        # The insert comes first: it takes the write lock (SQLite) and trips the unique key
        # before we read the user, so concurrent workers serialise here and never race on
        # the expiry (PostgreSQL: the row lock below does the same for different payments).
        session.add(
            Payment(
                provider=provider,
                provider_payment_id=notification.object_id,
                user_id=user_id,
                plan=plan.id,
                amount_minor=int(plan.price * 100),
                currency=plan.currency,
                status=notification.status,
                created_at=now,
            )
        )
        try:
            await session.flush()
        except IntegrityError:
            await session.rollback()
            return await _after_conflict(session, provider, notification.object_id)
        user = (
            await session.execute(select(User).where(User.id == user_id).with_for_update())
        ).scalar_one_or_none()
        if user is None:
            await session.rollback()
            return PaymentResult(PaymentOutcome.IGNORED, "metadata.user_id names no user")
        current = as_utc(user.subscription_expires_at) if user.subscription_expires_at else now
        user.subscription_expires_at = max(now, current) + timedelta(days=plan.period_days)
        user.plan = plan.id
        expires_at = user.subscription_expires_at
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            return await _after_conflict(session, provider, notification.object_id)
    for hook in on_subscription_changed:
        try:
            await hook(user_id)
        except Exception:  # the payment stands; a listener's failure is only logged
            log.exception("on_subscription_changed listener failed for user %s", user_id)
    return PaymentResult(PaymentOutcome.PROCESSED, user_id=user_id, expires_at=expires_at)


async def _after_conflict(
    session: AsyncSession, provider: str, provider_payment_id: str
) -> PaymentResult:
    """An insert failed: the same payment recorded already, or (PostgreSQL) an unknown user."""
    found = await session.scalar(
        select(Payment.id).where(
            Payment.provider == provider, Payment.provider_payment_id == provider_payment_id
        )
    )
    if found is not None:
        return PaymentResult(PaymentOutcome.DUPLICATE, "the payment is recorded already")
    return PaymentResult(PaymentOutcome.IGNORED, "metadata.user_id names no user")


async def payments_of(sessions: async_sessionmaker[AsyncSession], user_id: int) -> list[Payment]:
    async with sessions() as session:
        rows = await session.scalars(
            select(Payment)
            .where(Payment.user_id == user_id)
            .order_by(Payment.created_at.desc(), Payment.id.desc())
        )
        return list(rows)

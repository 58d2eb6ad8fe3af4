"""Plans, payments, and what a payment's life does to a subscription.

A payment row is written `pending` at checkout. `payment.succeeded` for one of our plans, at
exactly that plan's price, extends the paying user's subscription by the plan's period from
max(now, current expiry) and marks the row `succeeded` (or records it, for a payment created
outside the service); `payment.canceled` marks a pending row `canceled`; a full refund of a
succeeded payment takes the plan's period back off the end and marks it `refunded`. Each
transition happens once: the row's status is read under the user's row lock, and the table
is unique on (provider, provider payment id). Anything else is acknowledged without effect
(`IGNORED`, with a reason for the log).

Every transaction locks the user's row first (a no-op UPDATE: PostgreSQL's row lock, SQLite's
write lock), so two payments of one user queue instead of deadlocking through the payment's
foreign key, and a deadlock or serialization failure that still happens is retried once.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import DateTime, ForeignKey, Integer, String, UniqueConstraint, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from upak.domain.db import Base, DatabaseUnavailable
from upak.domain.models import User
from upak.domain.notifications import (
    CANCELED_EVENT,
    REFUND_EVENT,
    SUCCEEDED_EVENT,
    MalformedNotification,
    Notification,
    parse_notification,
)

log = logging.getLogger("upak.billing")

__all__ = ["MalformedNotification", "Notification", "parse_notification"]

PROVIDER_YOOKASSA = "yookassa"
PENDING, SUCCEEDED, CANCELED, REFUNDED = "pending", "succeeded", "canceled", "refunded"
T = TypeVar("T")

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
    # pending -> succeeded -> refunded, or pending -> canceled (see the module docstring).
    status: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    refund_id: Mapped[str | None] = mapped_column(String(64), nullable=True)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider_payment_id": self.provider_payment_id,
            "plan": self.plan,
            "amount": {"value": minor_to_text(self.amount_minor), "currency": self.currency},
            "status": self.status,
            "created_at": as_utc(self.created_at).isoformat(),
        }

    def __repr__(self) -> str:
        return f"Payment(id={self.id}, provider={self.provider!r}, status={self.status!r})"


def minor_to_text(amount_minor: int) -> str:
    return f"{Decimal(amount_minor) / 100:.2f}"


def as_utc(moment: datetime) -> datetime:
    """SQLite hands timezone-aware columns back naive; they were written in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --- outcomes --------------------------------------------------------------------------------


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


def ignored(reason: str) -> PaymentResult:
    return PaymentResult(PaymentOutcome.IGNORED, reason)


DUPLICATE = PaymentResult(PaymentOutcome.DUPLICATE, "the payment is recorded already")
_USER_ID = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() accepts "٣" and "²"


def _why_not(notification: Notification, *, production: bool) -> str | None:
    """Why this succeeded-payment notification must not touch a subscription, or None."""
    if notification.event != SUCCEEDED_EVENT:
        return f"event {notification.event!r} does not activate anything"
    if notification.status != SUCCEEDED:
        return f"payment status is {notification.status!r}"
    if notification.test and production:
        return "a test payment is refused in production"
    plan = PLANS.get(notification.plan or "")
    if plan is None:
        return "metadata.plan names no plan"
    if notification.amount is None or notification.currency is None:
        return "the payment has no amount"
    if notification.amount != plan.price or notification.currency != plan.currency:
        return f"the amount is not the price of plan {plan.id!r}"
    if _USER_ID.fullmatch(notification.user_id or "") is None:
        return "metadata.user_id is not a user id (ASCII digits)"
    return None


# --- transactions ----------------------------------------------------------------------------

# PostgreSQL's deadlock_detected and serialization_failure: the transaction was rolled back
# whole, so running it again is safe.
_RETRYABLE = {"40P01", "40001"}


def _retryable(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in _RETRYABLE


async def in_transaction(
    sessions: async_sessionmaker[AsyncSession], work: Callable[[AsyncSession], Awaitable[T]]
) -> T:
    """Run `work` in a session of its own; a deadlock, a serialization failure or a lock
    wait past SQLite's busy timeout runs it once more, anything else propagates."""
    for attempt in (1, 2):
        async with sessions() as session:
            try:
                return await work(session)
            except DBAPIError as exc:
                await session.rollback()
                if attempt == 2 or not _retryable(exc):
                    raise
                log.warning("payment transaction retried after %s", type(exc.orig).__name__)
            except DatabaseUnavailable as exc:
                # SQLite's lock, held by another writer past the busy timeout (or a WAL
                # snapshot another commit made stale, which fails at once): as a deadlock.
                await session.rollback()
                if attempt == 2 or not exc.contention:
                    raise
                log.warning("payment transaction retried after a lock wait (%s)", exc.reason)
    raise AssertionError("unreachable")


async def _lock_user(session: AsyncSession, user_id: int) -> User | None:
    """Lock the user's row before anything else of the transaction (see the module docstring)."""
    locked = await session.execute(
        update(User).where(User.id == user_id).values(plan=User.plan),
        execution_options={"synchronize_session": False},
    )
    if locked.rowcount == 0:  # type: ignore[attr-defined]
        return None
    return await session.get(User, user_id, populate_existing=True)


async def _payment_row(session: AsyncSession, provider: str, payment_id: str) -> Payment | None:
    return await session.scalar(
        select(Payment)
        .where(Payment.provider == provider, Payment.provider_payment_id == payment_id)
        .execution_options(populate_existing=True)
    )


async def _tell(hooks: Sequence[SubscriptionHook], user_id: int) -> None:
    for hook in hooks:
        try:
            await hook(user_id)
        except Exception:  # the change stands; a listener's failure is only logged
            log.exception("on_subscription_changed listener failed for user %s", user_id)


# --- the effects -----------------------------------------------------------------------------


async def apply_payment(
    sessions: async_sessionmaker[AsyncSession],
    notification: Notification,
    *,
    now: datetime,
    provider: str = PROVIDER_YOOKASSA,
    production: bool = False,
    on_subscription_changed: Sequence[SubscriptionHook] = (),
) -> PaymentResult:
    """A succeeded payment: extend the subscription and mark the payment, exactly once."""
    reason = _why_not(notification, production=production)
    if reason is not None:
        return ignored(reason)
    plan = PLANS[notification.plan or ""]
    user_id = int(notification.user_id or "")

    async def work(session: AsyncSession) -> PaymentResult:
        user = await _lock_user(session, user_id)
        if user is None:
            return ignored("metadata.user_id names no user")
        row = await _payment_row(session, provider, notification.object_id)
        if row is not None and row.status in (SUCCEEDED, REFUNDED):
            return DUPLICATE
        if row is not None and row.user_id != user_id:
            return ignored("the payment was checked out by another user")
        if row is None:  # created outside the service (or its checkout row was never written)
            row = Payment(provider=provider, provider_payment_id=notification.object_id)
            row.created_at = now
            session.add(row)
        row.user_id, row.plan, row.status, row.updated_at = user_id, plan.id, SUCCEEDED, now
        row.amount_minor, row.currency = int(plan.price * 100), plan.currency
        current = as_utc(user.subscription_expires_at) if user.subscription_expires_at else now
        user.subscription_expires_at = max(now, current) + timedelta(days=plan.period_days)
        user.plan = plan.id
        expires_at = user.subscription_expires_at
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            return await _after_conflict(session, provider, notification.object_id)
        return PaymentResult(PaymentOutcome.PROCESSED, user_id=user_id, expires_at=expires_at)

    result = await in_transaction(sessions, work)
    if result.outcome is PaymentOutcome.PROCESSED:
        await _tell(on_subscription_changed, user_id)
    return result


async def _after_conflict(
    session: AsyncSession, provider: str, provider_payment_id: str
) -> PaymentResult:
    """An insert failed: the same payment recorded already, or (PostgreSQL) an unknown user."""
    found = await _payment_row(session, provider, provider_payment_id)
    return DUPLICATE if found is not None else ignored("metadata.user_id names no user")


async def _lock_payment_owner(
    session: AsyncSession, provider: str, payment_id: str
) -> tuple[User, Payment] | None:
    """Lock the user who owns a recorded payment (user first, as everywhere), then the row."""
    owner = (
        select(Payment.user_id)
        .where(Payment.provider == provider, Payment.provider_payment_id == payment_id)
        .scalar_subquery()
    )
    locked = await session.execute(
        update(User).where(User.id == owner).values(plan=User.plan),
        execution_options={"synchronize_session": False},
    )
    if locked.rowcount == 0:  # type: ignore[attr-defined]
        return None
    row = await _payment_row(session, provider, payment_id)
    assert row is not None  # its owner is locked: the row cannot go away
    user = await session.get(User, row.user_id, populate_existing=True)
    assert user is not None
    return user, row


def _refused_move(row: Payment, source: str, target: str, why: str) -> PaymentResult | None:
    """None when the row may move from `source` to `target`, else the answer: a duplicate
    when it is there already, ignored from any other status."""
    if row.status == target:
        return DUPLICATE
    if row.status != source:
        return ignored(f"a {row.status} payment {why}")
    return None


async def cancel_payment(
    sessions: async_sessionmaker[AsyncSession],
    notification: Notification,
    *,
    now: datetime,
    provider: str = PROVIDER_YOOKASSA,
) -> PaymentResult:
    """A canceled payment: a pending row becomes canceled; nothing else changes."""
    if notification.event != CANCELED_EVENT or notification.status != CANCELED:
        return ignored(f"payment status is {notification.status!r}")

    async def work(session: AsyncSession) -> PaymentResult:
        found = await _lock_payment_owner(session, provider, notification.object_id)
        if found is None:
            return ignored("no checkout of ours has this payment id")
        _, row = found
        refused = _refused_move(row, PENDING, CANCELED, "cannot be canceled")
        if refused is not None:
            return refused
        row.status, row.updated_at = CANCELED, now
        await session.commit()
        return PaymentResult(PaymentOutcome.PROCESSED, user_id=row.user_id)

    return await in_transaction(sessions, work)


async def apply_refund(
    sessions: async_sessionmaker[AsyncSession],
    notification: Notification,
    *,
    now: datetime,
    provider: str = PROVIDER_YOOKASSA,
    on_subscription_changed: Sequence[SubscriptionHook] = (),
) -> PaymentResult:
    """A succeeded full refund takes the plan's period off the end of the subscription, once
    per payment (a second notification, or a second refund, finds the row `refunded`)."""
    if notification.event != REFUND_EVENT or notification.status != SUCCEEDED:
        return ignored(f"refund status is {notification.status!r}")
    if notification.payment_id is None or notification.amount is None:
        return ignored("the refund names no payment or amount")
    payment_id = notification.payment_id

    async def work(session: AsyncSession) -> PaymentResult:
        found = await _lock_payment_owner(session, provider, payment_id)
        if found is None:
            return ignored("the refunded payment is not one of ours")
        user, row = found
        refused = _refused_move(row, SUCCEEDED, REFUNDED, "has nothing to refund")
        if refused is not None:
            return refused
        if notification.amount != Decimal(row.amount_minor) / 100 or (
            notification.currency != row.currency
        ):
            return ignored("a partial refund leaves the subscription as it is")
        plan = PLANS[row.plan]
        if user.subscription_expires_at is not None:
            user.subscription_expires_at = as_utc(user.subscription_expires_at) - timedelta(
                days=plan.period_days
            )
        row.status, row.refund_id, row.updated_at = REFUNDED, notification.object_id, now
        expires_at = user.subscription_expires_at
        await session.commit()
        return PaymentResult(PaymentOutcome.PROCESSED, user_id=row.user_id, expires_at=expires_at)

    result = await in_transaction(sessions, work)
    if result.outcome is PaymentOutcome.PROCESSED and result.user_id is not None:
        await _tell(on_subscription_changed, result.user_id)
    return result


async def record_checkout(
    sessions: async_sessionmaker[AsyncSession],
    *,
    provider_payment_id: str,
    user_id: int,
    plan: Plan,
    now: datetime,
    provider: str = PROVIDER_YOOKASSA,
) -> None:
    """The payment YooKassa just created, as `pending` (it shows in GET /payments at once).
    A row there already (YooKassa returned the same payment for the same key) stays."""

    async def work(session: AsyncSession) -> None:
        if await _lock_user(session, user_id) is None:
            raise LookupError(f"user {user_id} does not exist")
        if await _payment_row(session, provider, provider_payment_id) is not None:
            return
        session.add(
            Payment(
                provider=provider,
                provider_payment_id=provider_payment_id,
                user_id=user_id,
                plan=plan.id,
                amount_minor=int(plan.price * 100),
                currency=plan.currency,
                status=PENDING,
                created_at=now,
                updated_at=now,
            )
        )
        await session.commit()

    await in_transaction(sessions, work)


async def pending_payments(
    sessions: async_sessionmaker[AsyncSession], *, created_before: datetime, limit: int = 500
) -> list[str]:
    """Provider ids of payments still pending that were created before `created_before`."""
    async with sessions() as session:
        rows = await session.scalars(
            select(Payment.provider_payment_id)
            .where(Payment.status == PENDING, Payment.created_at < created_before)
            .order_by(Payment.created_at)
            .limit(limit)
        )
        return list(rows)


async def payments_of(sessions: async_sessionmaker[AsyncSession], user_id: int) -> list[Payment]:
    async with sessions() as session:
        rows = await session.scalars(
            select(Payment)
            .where(Payment.user_id == user_id)
            .order_by(Payment.created_at.desc(), Payment.id.desc())
        )
        return list(rows)

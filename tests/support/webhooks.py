"""Deliveries as the real senders make them: YooKassa's notification objects (the `yookassa`
SDK builds and serialises them) signed, for /webhooks/upak, by the official `standardwebhooks`
package. Nothing here signs or lays out JSON by hand."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook
from yookassa.domain.notification import PaymentWebhookNotification

from upak.domain.billing import Payment, as_utc
from upak.domain.db import migrate
from upak.domain.models import User

SECRET = "whsec_" + base64.b64encode(b"upak-test-secret-32-bytes-long!!").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"upak-old-secret-rotated-out-0001").decode()
# An address inside YooKassa's published 185.71.76.0/27.
YOOKASSA_IP = "185.71.76.10"


def notification(
    *,
    user_id: int | str = 1,
    plan: str = "start",
    value: str = "490.00",
    currency: str = "RUB",
    event: str = "payment.succeeded",
    status: str = "succeeded",
    payment_id: str | None = None,
) -> bytes:
    """A YooKassa payment notification, as YooKassa sends it (the SDK's field layout)."""
    payment_id = payment_id or str(uuid.uuid4())
    obj: dict[str, Any] = {
        "id": payment_id,
        "status": status,
        "paid": status == "succeeded",
        "amount": {"value": value, "currency": currency},
        "income_amount": {"value": value, "currency": currency},
        "description": f"UPAK {plan}",
        "created_at": "2024-05-01T10:00:00.000Z",
        "metadata": {"user_id": str(user_id), "plan": plan},
        "payment_method": {
            "type": "bank_card",
            "id": payment_id,
            "saved": False,
            "title": "Bank card *4444",
            "card": {
                "first6": "555555",
                "last4": "4444",
                "expiry_month": "12",
                "expiry_year": "2030",
                "card_type": "MasterCard",
                "issuer_country": "RU",
            },
        },
        "recipient": {"account_id": "100500", "gateway_id": "100700"},
        "refundable": True,
        "test": True,
        "refunded_amount": {"value": "0.00", "currency": currency},
    }
    if status == "succeeded":
        obj["captured_at"] = "2024-05-01T10:00:05.000Z"
    built = PaymentWebhookNotification({"type": "notification", "event": event, "object": obj})
    return built.json().encode()


def signed_headers(
    body: bytes,
    *,
    msg_id: str | None = None,
    at: float,
    secrets: tuple[str, ...] = (SECRET,),
) -> dict[str, str]:
    """Standard Webhooks headers made by the official package (one signature per secret)."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    moment = datetime.fromtimestamp(at, UTC)
    signatures = [Webhook(s).sign(msg_id, moment, body.decode()) for s in secrets]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at)),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
    }


def create_database(path: str, users: int = 1) -> str:
    """A SQLite file with the schema and `users` users (ids 1..n); returns the async URL."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        migrate(connection)  # the app migrates at start-up: the schema must come from Alembic
    with Session(engine) as session:
        for n in range(1, users + 1):
            session.add(User(id=n, email=f"user{n}@example.com", password_hash="x"))
        session.commit()
    engine.dispose()
    return f"sqlite+aiosqlite:///{path}"


def read_state(path: str, user_id: int = 1) -> tuple[int, datetime | None, str | None]:
    """(payments recorded, the user's expiry, the user's plan), read from the file."""
    engine = create_engine(f"sqlite:///{path}")
    with Session(engine) as session:
        count = session.query(Payment).count()
        user = session.get(User, user_id)
        assert user is not None
        expires = as_utc(user.subscription_expires_at) if user.subscription_expires_at else None
        plan = user.plan
    engine.dispose()
    return count, expires, plan

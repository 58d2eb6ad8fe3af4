"""Deliveries as the real senders make them: YooKassa's notification objects (the `yookassa`
SDK builds and serialises them) signed, for /webhooks/upak, by the official `standardwebhooks`
package. Nothing here signs or lays out JSON by hand."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
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


class Harness:
    """An app, its database file and a fixed clock; `client(ip)` calls it from `ip`."""

    def __init__(self, app: Any, db_path: str, clock: list[float]) -> None:
        self.app = app
        self.db_path = db_path
        self.clock = clock
        self.services = app.state.services

    def client(self, ip: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://t")

    def state(self, user_id: int = 1) -> tuple[int, datetime | None, str | None]:
        return read_state(self.db_path, user_id)

    def statuses(self) -> dict[str, str]:
        """provider payment id -> status, for every payment row."""
        engine = create_engine(f"sqlite:///{self.db_path}")
        with Session(engine) as session:
            found = {p.provider_payment_id: p.status for p in session.query(Payment)}
        engine.dispose()
        return found

    @property
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock[0], UTC)


MakeHarness = Callable[..., Awaitable[Harness]]


@contextlib.asynccontextmanager
async def harnesses(tmp_path: Path, start: float, **base: Any) -> AsyncIterator[MakeHarness]:
    """`build(**settings)` makes a started app on a fresh SQLite file with users 1 and 2 and
    a clock at `start`; every app built is shut down when the block ends."""
    from tests.conftest import make_settings
    from upak.web.app import create_app

    contexts = []

    async def build(**overrides: Any) -> Harness:
        db_path = str(tmp_path / f"upak{len(contexts)}.db")
        settings = {"database_url": create_database(db_path, users=2), **base, **overrides}
        clock = [start]
        app = create_app(make_settings(**settings), clock=lambda: clock[0])
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        contexts.append(ctx)
        return Harness(app, db_path, clock)

    try:
        yield build
    finally:
        for ctx in contexts:
            await ctx.__aexit__(None, None, None)

"""YooKassa notifications, read strictly: `{"type", "event", "object": payment | refund}`.

Nothing later meets a wrong type: every field we use is checked here, and a body we cannot
read is a `MalformedNotification` whose message says what is wrong (the webhook's 400).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from upak.domain.yookassa_api import RemotePayment, RemoteRefund

SUCCEEDED_EVENT = "payment.succeeded"
CANCELED_EVENT = "payment.canceled"
REFUND_EVENT = "refund.succeeded"


class MalformedNotification(ValueError):
    """The body is not a YooKassa notification we can read (a 400). Says what is wrong."""


@dataclass(frozen=True)
class Notification:
    """The parts of a YooKassa notification we use. For a refund, `object_id` is the refund's
    id and `payment_id` the payment it returns."""

    event: str
    object_id: str
    status: str
    amount: Decimal | None = None
    currency: str | None = None
    user_id: str | None = None
    plan: str | None = None
    test: bool = False
    payment_id: str | None = None

    def as_confirmed(self, remote: RemotePayment | RemoteRefund) -> Notification:
        """This notification with YooKassa's own facts in place of the body's."""
        facts: dict[str, Any] = {
            "status": remote.status,
            "amount": remote.amount,
            "currency": remote.currency,
        }
        if isinstance(remote, RemoteRefund):
            facts["payment_id"] = remote.payment_id
        else:
            facts.update(user_id=remote.user_id, plan=remote.plan, test=remote.test)
        return replace(self, **facts)


def from_remote_payment(remote: RemotePayment) -> Notification:
    """The notification YooKassa would have sent for a payment in this state (reconcile)."""
    event = f"payment.{remote.status}"
    return Notification(event, remote.id, remote.status).as_confirmed(remote)


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


def _amount(obj: dict[str, Any]) -> tuple[Decimal | None, str | None]:
    if obj.get("amount") is None:
        return None, None
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
    return amount, currency


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
    amount, currency = _amount(obj)
    user_id = plan = None
    if obj.get("metadata") is not None:
        metadata = obj["metadata"]
        if not isinstance(metadata, dict):
            raise MalformedNotification("object.metadata must be a JSON object")
        user_id = _text(metadata, "user_id", "object.metadata.", required=False)
        plan = _text(metadata, "plan", "object.metadata.", required=False)
    payment_id = _text(obj, "payment_id", "object.", required=event == REFUND_EVENT, limit=64)
    test = obj.get("test", False)
    if not isinstance(test, bool):
        raise MalformedNotification("object.test must be true or false")
    assert event is not None and object_id is not None and status is not None
    return Notification(event, object_id, status, amount, currency, user_id, plan, test, payment_id)

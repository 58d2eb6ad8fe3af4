"""What a YooKassa notification, or YooKassa's own answer, does: confirm, then apply once.

With shop credentials a notification is a hint: the payment (or refund) is fetched from the
API and YooKassa's status, amount, currency, metadata and `test` flag are what is applied.
One the API does not know, or whose status there differs, changes nothing. Without
credentials (development) the body is trusted as sent. A fault of the API propagates as
`YooKassaUnavailable` before anything was written, so the webhook answers non-200 and
YooKassa delivers it again.

`reconcile` asks the API about payments still pending after a while, so a lost notification
costs minutes, not a customer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from upak.domain.billing import (
    PaymentOutcome,
    PaymentResult,
    SubscriptionHook,
    apply_payment,
    apply_refund,
    cancel_payment,
    ignored,
    pending_payments,
)
from upak.domain.notifications import (
    CANCELED_EVENT,
    REFUND_EVENT,
    SUCCEEDED_EVENT,
    Notification,
    from_remote_payment,
)
from upak.domain.yookassa_api import RemotePayment, RemoteRefund, YooKassaAPI

log = logging.getLogger("upak.billing")


async def confirm(api: YooKassaAPI, notification: Notification) -> Notification | str:
    """The notification with YooKassa's facts, or why it must change nothing."""
    remote: RemotePayment | RemoteRefund | None
    if notification.event.startswith("refund."):
        kind, remote = "refund", await api.get_refund(notification.object_id)
    elif notification.event.startswith("payment."):
        kind, remote = "payment", await api.get_payment(notification.object_id)
    else:
        return notification
    if remote is None:
        return f"YooKassa's API does not know this {kind}"
    if remote.status != notification.status:
        return f"the {kind} is {remote.status!r} at YooKassa, not {notification.status!r}"
    return notification.as_confirmed(remote)


@dataclass(frozen=True)
class Effects:
    """What applying needs besides the notification."""

    sessions: async_sessionmaker[AsyncSession]
    now: datetime
    production: bool = False
    hooks: Sequence[SubscriptionHook] = ()


async def apply(effects: Effects, notification: Notification) -> PaymentResult:
    """Apply a (confirmed or trusted) notification by its event."""
    if notification.event == SUCCEEDED_EVENT:
        return await apply_payment(
            effects.sessions,
            notification,
            now=effects.now,
            production=effects.production,
            on_subscription_changed=effects.hooks,
        )
    if notification.event == CANCELED_EVENT:
        return await cancel_payment(effects.sessions, notification, now=effects.now)
    if notification.event == REFUND_EVENT:
        return await apply_refund(
            effects.sessions, notification, now=effects.now, on_subscription_changed=effects.hooks
        )
    return ignored(f"event {notification.event!r} does not change anything")


async def settle(
    effects: Effects, notification: Notification, api: YooKassaAPI | None
) -> PaymentResult:
    """A notification from a webhook: confirmed with the API when there is one, then applied."""
    if api is not None:
        confirmed = await confirm(api, notification)
        if isinstance(confirmed, str):
            return ignored(confirmed)
        notification = confirmed
    return await apply(effects, notification)


@dataclass
class ReconcileReport:
    checked: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1


async def reconcile(effects: Effects, api: YooKassaAPI, *, older_than: float) -> ReconcileReport:
    """Ask the API about every payment pending for more than `older_than` seconds and apply
    what it says. Safe to run at any time, twice at once too: each effect happens once."""
    report = ReconcileReport()
    before = effects.now - timedelta(seconds=older_than)
    for payment_id in await pending_payments(effects.sessions, created_before=before):
        report.checked += 1
        remote = await api.get_payment(payment_id)
        if remote is None:
            log.warning("reconcile: YooKassa does not know pending payment %s", payment_id)
            report.count("unknown")
            continue
        result = await apply(effects, from_remote_payment(remote))
        if result.outcome is PaymentOutcome.PROCESSED:
            report.count(remote.status)
            log.info("reconcile: payment %s %s", payment_id, remote.status)
        else:
            report.count("unchanged")
            log.info("reconcile: payment %s unchanged (%s)", payment_id, result.reason)
    return report

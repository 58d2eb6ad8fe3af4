"""`POST /webhooks/upak` (Standard Webhooks signatures) and `POST /webhooks/yookassa` (source IP).

Both carry YooKassa's notification JSON and end in the same place: authenticate first, read
the body, then claim the delivery in the replay gate and apply the payment once.

    200 {"status": "processed" | "duplicate" | "ignored"}
    400 malformed body · 401 bad or missing signature or timestamp · 403 untrusted source
    409 + Retry-After: the same delivery is being processed right now (the sender retries)
    413 body over 64 KiB (the body limit) · 503 + Retry-After: processing failed, or YooKassa's
    API could not confirm the notification; nothing applied, the claim released

With shop credentials (YOOKASSA_SHOP_ID) a notification is only a hint: what is applied is
what YooKassa's API says about the payment or refund (upak.domain.payment_events).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.responses import JSONResponse, Response

from upak.domain.billing import PaymentResult
from upak.domain.db import DatabaseUnavailable
from upak.domain.notifications import MalformedNotification, Notification, parse_notification
from upak.domain.payment_events import Effects, settle
from upak.domain.yookassa_api import YooKassaUnavailable
from upak.features.replay import ClaimState
from upak.features.signatures import SignatureError, verify
from upak.features.yookassa import delivery_key, is_yookassa
from upak.web.client_ip import client_ip
from upak.web.openapi import problems, raw_body
from upak.web.problems import problem
from upak.web.schemas import WebhookResult, YooKassaNotification
from upak.web.services import Services, services_of

log = logging.getLogger("upak.webhooks")
router = APIRouter(tags=["webhooks"])

IN_PROGRESS_RETRY_AFTER = "1"
FAILED_RETRY_AFTER = "5"
# What both routes answer once the delivery is authenticated (documented in /openapi.json).
DELIVERY_PROBLEMS = {
    400: "The body is not a notification: `detail` names the field.",
    409: "The same delivery is being processed right now: retry.",
    503: "Processing failed; nothing was applied: retry.",
}


@router.post(
    "/webhooks/upak",
    response_model=WebhookResult,
    responses=problems(
        {
            **DELIVERY_PROBLEMS,
            401: "Bad or missing signature, or a timestamp outside REDIS_TTL seconds.",
            503: "Not configured (no WEBHOOK_SECRET), or processing failed: retry.",
        },
        retry_after=(409, 503),
    ),
    openapi_extra=raw_body(
        YooKassaNotification,
        "YooKassa's notification JSON, signed per Standard Webhooks.",
        headers={
            "webhook-id": "The delivery's id (the same on every retry of it).",
            "webhook-timestamp": "Unix seconds when it was signed.",
            "webhook-signature": "`v1,<base64 HMAC-SHA256>`, space-separated to rotate keys.",
        },
    ),
)
async def upak_webhook(request: Request) -> Response:
    services = services_of(request)
    if services.webhook_keys is None:
        return problem(
            503,
            "Signed webhooks are not configured",
            "The server has no WEBHOOK_SECRET; deliveries are refused until it is set.",
            headers={"Retry-After": "60"},
        )
    body = await request.body()
    try:
        delivery = verify(
            services.webhook_keys,
            request.headers,
            body,
            now=services.clock(),
            tolerance=services.settings.redis_ttl,
        )
    except SignatureError as exc:
        log.warning("signed webhook refused: %s", exc)
        return problem(401, "Invalid webhook signature", str(exc))
    return await _deliver(services, "upak", delivery.id, body)


@router.post(
    "/webhooks/yookassa",
    response_model=WebhookResult,
    responses=problems(
        {
            **DELIVERY_PROBLEMS,
            403: "Not from YooKassa's networks (YOOKASSA_ALLOWED_IPS, TRUSTED_PROXIES).",
        },
        retry_after=(409, 503),
    ),
    openapi_extra=raw_body(YooKassaNotification, "YooKassa's notification JSON."),
)
async def yookassa_webhook(request: Request) -> Response:
    services = services_of(request)
    address = client_ip(request.scope)
    if not is_yookassa(address, services.yookassa_networks):
        log.warning("YooKassa webhook refused: %s is not in YooKassa's networks", address)
        return problem(
            403, "Untrusted source", "Notifications are accepted from YooKassa's networks only."
        )
    body = await request.body()
    try:
        notification = parse_notification(body)
    except MalformedNotification as exc:
        return problem(400, "Malformed notification", str(exc))
    key = delivery_key(notification.event, notification.object_id, notification.status)
    return await _process(services, "yookassa", key, notification)


async def _deliver(services: Services, scope: str, delivery_id: str, body: bytes) -> Response:
    try:
        notification = parse_notification(body)
    except MalformedNotification as exc:
        return problem(400, "Malformed notification", str(exc))
    return await _process(services, scope, delivery_id, notification)


async def _process(
    services: Services, scope: str, delivery_id: str, notification: Notification
) -> Response:
    assert services.db is not None
    db = services.db

    async def handle() -> PaymentResult:
        effects = Effects(
            db,
            now=datetime.fromtimestamp(services.clock(), UTC),
            production=services.settings.production,
            hooks=services.on_subscription_changed,
        )
        return await settle(effects, notification, services.yookassa)

    try:
        outcome = await services.replay.once(scope, delivery_id, handle)
    except YooKassaUnavailable as exc:
        # Not confirmed, nothing applied, the claim released: YooKassa delivers it again.
        log.warning(
            "webhook %s %r not confirmed, released for the retry: %s", scope, delivery_id, exc
        )
        return problem(
            503,
            "Notification not confirmed",
            "YooKassa's API could not confirm it; nothing was applied. Retry later.",
            headers={"Retry-After": FAILED_RETRY_AFTER},
        )
    except (DatabaseUnavailable, PoolTimeout):
        # Nothing was applied and the claim is released. The app's handler answers 503 with
        # Retry-After in one line: a traceback per delivery would flood the log all outage.
        raise
    except Exception:
        # The claim is released: the provider's retry will find the delivery unclaimed.
        log.exception("webhook %s %r failed; released for the retry", scope, delivery_id)
        return problem(
            503,
            "Webhook processing failed",
            "Nothing was applied; retry later.",
            headers={"Retry-After": FAILED_RETRY_AFTER},
        )
    if outcome.state is ClaimState.IN_PROGRESS:
        return problem(
            409,
            "Delivery in progress",
            "The same delivery is being processed; retry shortly.",
            headers={"Retry-After": IN_PROGRESS_RETRY_AFTER},
        )
    if outcome.state is ClaimState.DONE:
        log.info("webhook %s %r: duplicate", scope, delivery_id)
        return JSONResponse({"status": "duplicate"})
    result = outcome.result
    assert result is not None
    detail = result.reason or f"user {result.user_id}"
    log.info("webhook %s %r: %s (%s)", scope, delivery_id, result.outcome, detail)
    return JSONResponse({"status": str(result.outcome)})

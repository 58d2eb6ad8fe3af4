"""`POST /payments` (checkout through YooKassa) and `GET /payments` (the user's payments).

201 {"id", "status", "confirmation_url", "plan", "amount"}   `id` is YooKassa's payment id
400 bad Idempotency-Key · 401 not logged in · 409 the same key is being processed
422 invalid body, or the same Idempotency-Key with another body
503 + Retry-After: payments not configured, or YooKassa unreachable, slow, failing or
    refusing our credentials (nothing was recorded; retry with the same key)
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from upak.domain.billing import PLANS, payments_of, record_checkout
from upak.domain.models import User
from upak.domain.yookassa_api import CheckoutRequest, YooKassaUnavailable
from upak.features.idempotency import KeyState
from upak.web.dependencies import require_user
from upak.web.openapi import problems
from upak.web.problems import problem
from upak.web.schemas import Money, PaymentItem
from upak.web.services import Services, services_of

log = logging.getLogger("upak.payments")
router = APIRouter(tags=["billing"])

# Printable ASCII, as the draft's examples; long enough for a UUID and then some.
_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")
# Derives YooKassa's Idempotence-Key from the client's, so a retry after our store forgot the
# key still reaches the same payment upstream (YooKassa keeps keys for 24 h).
_KEY_NAMESPACE = uuid.UUID("6f1c2a52-9d0e-4c1e-9a5f-7570616b0016")


class CheckoutBody(BaseModel):
    plan: Literal["start", "pro"]
    return_url: str = Field(
        pattern=r"^https://[^\s]+$",
        max_length=2048,
        description="Where YooKassa sends the buyer back after paying (https://).",
    )


class CheckoutCreated(BaseModel):
    id: str = Field(description="YooKassa's payment id.")
    status: str
    confirmation_url: str = Field(description="Send the buyer here to pay.")
    plan: str
    amount: Money


async def current_user_id(user: Annotated[User, Depends(require_user)]) -> int:
    """The signed-in user's id (401 without a live session); tests may override it."""
    return user.id


@router.get("/payments", response_model=list[PaymentItem])
async def list_payments(
    request: Request, user_id: Annotated[int, Depends(current_user_id)]
) -> list[PaymentItem]:
    services = services_of(request)
    return [
        PaymentItem.model_validate(payment.as_json())
        for payment in await payments_of(services.db, user_id)
    ]


def _unavailable(detail: str, retry_after: int) -> JSONResponse:
    return problem(
        503,
        "Payments are unavailable",
        detail,
        headers={"Retry-After": str(retry_after)},
    )


@router.post(
    "/payments",
    status_code=201,
    response_model=CheckoutCreated,
    responses=problems(
        {
            400: "The Idempotency-Key header is not 1 to 255 printable ASCII characters.",
            409: "A request with this Idempotency-Key is still being processed.",
            503: "YooKassa's API is unreachable, slow or refusing, or checkout is not "
            "configured: nothing was charged or recorded.",
        },
        retry_after=(409, 503),
    ),
)
async def checkout(
    request: Request,
    body: CheckoutBody,
    user_id: Annotated[int, Depends(current_user_id)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Makes a retry safe (IETF draft): the same key and body answer the "
            "same payment; the same key with another body is a 422. Anything else is a 400.",
            # Documented, checked by the route itself (a 400 names the header).
            json_schema_extra={"pattern": _IDEMPOTENCY_KEY.pattern, "maxLength": 255},
        ),
    ] = None,
) -> Response:
    services = services_of(request)
    if services.yookassa is None:
        return _unavailable("The server has no YooKassa shop credentials configured.", 60)
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        return problem(
            400,
            "Invalid Idempotency-Key",
            "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces.",
        )
    request_body = body.model_dump()
    scope = f"checkout:u{user_id}"
    if idempotency_key is None:
        return _answer(await _create(services, body, user_id, str(uuid.uuid4())))
    begun = await services.idempotency.begin(scope, idempotency_key, request_body)
    if begun.state is KeyState.MISMATCH:
        return problem(
            422,
            "Idempotency-Key reused",
            "This Idempotency-Key was used with another request body; use a new key.",
            errors=[{"field": "Idempotency-Key", "message": "used with another request body"}],
        )
    if begun.state is KeyState.IN_PROGRESS:
        return problem(
            409,
            "Request in progress",
            "A request with this Idempotency-Key is being processed; retry shortly.",
            headers={"Retry-After": "1"},
        )
    if begun.state is KeyState.REPLAY:
        return JSONResponse(begun.response, status_code=201)
    upstream_key = str(uuid.uuid5(_KEY_NAMESPACE, f"{user_id}:{idempotency_key}"))
    try:
        result = await _create(services, body, user_id, upstream_key)
    except BaseException:  # e.g. the database failed: the key must not stay "in progress"
        await services.idempotency.abandon(scope, idempotency_key)
        raise
    if isinstance(result, CheckoutCreated):
        await services.idempotency.finish(scope, idempotency_key, request_body, result.model_dump())
    else:
        await services.idempotency.abandon(scope, idempotency_key)
    return _answer(result)


def _answer(result: CheckoutCreated | Response) -> Response:
    if isinstance(result, CheckoutCreated):
        return JSONResponse(result.model_dump(), status_code=201)
    return result


async def _create(
    services: Services, body: CheckoutBody, user_id: int, key: str
) -> CheckoutCreated | Response:
    """Create the payment upstream, then record it pending; a fault leaves nothing recorded."""
    assert services.yookassa is not None
    plan = PLANS[body.plan]
    order = CheckoutRequest(
        amount=plan.price,
        currency=plan.currency,
        description=f"UPAK {plan.title}: {plan.period_days} days",
        user_id=user_id,
        plan=plan.id,
        return_url=body.return_url,
    )
    try:
        remote = await services.yookassa.create_payment(order, key)
        if remote.confirmation_url is None:
            raise YooKassaUnavailable("YooKassa's payment has no confirmation_url")
    except YooKassaUnavailable as exc:
        log.warning("checkout for user %s failed: %s", user_id, exc)
        return _unavailable(f"{exc}. Nothing was charged; retry later.", exc.retry_after)
    now = datetime.fromtimestamp(services.clock(), UTC)
    await record_checkout(
        services.db, provider_payment_id=remote.id, user_id=user_id, plan=plan, now=now
    )
    return CheckoutCreated(
        id=remote.id,
        status=remote.status,
        confirmation_url=remote.confirmation_url,
        plan=plan.id,
        amount=Money(value=f"{plan.price:.2f}", currency=plan.currency),
    )

"""`GET /payments`: the signed-in user's payments, newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from upak.domain.billing import payments_of
from upak.domain.models import User
from upak.web.dependencies import require_user
from upak.web.schemas import PaymentItem
from upak.web.services import services_of

router = APIRouter(tags=["billing"])


async def current_user_id(user: Annotated[User, Depends(require_user)]) -> int:
    """The signed-in user's id (401 without a live session); tests may override it."""
    return user.id


@router.get("/payments", response_model=list[PaymentItem])
async def list_payments(
    request: Request, user_id: Annotated[int, Depends(current_user_id)]
) -> list[dict[str, Any]]:
    services = services_of(request)
    assert services.db is not None
    return [payment.as_json() for payment in await payments_of(services.db, user_id)]

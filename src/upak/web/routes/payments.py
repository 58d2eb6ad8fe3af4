"""`GET /payments`: the signed-in user's payments, newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request

from upak.domain.billing import payments_of
from upak.web.services import get_services

router = APIRouter(tags=["billing"])


async def current_user_id(request: Request) -> int:
    """Stand-in until accounts land (`upak.web.dependencies.require_user`): nobody is signed
    in, so the route answers 401; tests override this dependency with a user id."""
    raise HTTPException(401, "Sign in to see your payments")


@router.get("/payments")
async def list_payments(
    request: Request, user_id: Annotated[int, Depends(current_user_id)]
) -> list[dict[str, Any]]:
    services = get_services(request)
    assert services.db is not None
    return [payment.as_json() for payment in await payments_of(services.db, user_id)]

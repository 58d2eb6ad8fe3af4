"""`GET /me`: the caller's account, straight from the users table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends

from upak.domain.models import User
from upak.web.dependencies import require_user

router = APIRouter(tags=["accounts"])


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; we store UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def me_body(user: User) -> dict[str, Any]:
    """The one place the /me document is built (plan fields are null until a payment)."""
    return {
        "id": user.id,
        "email": user.email,
        "plan": user.plan,
        "subscription_expires_at": _iso(user.subscription_expires_at),
    }


@router.get("/me")
async def me(user: User = Depends(require_user)) -> dict[str, Any]:
    return me_body(user)

"""`GET /plans`: the plan catalogue, public."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from upak.domain.billing import PLANS

router = APIRouter(tags=["billing"])


@router.get("/plans")
async def list_plans() -> list[dict[str, Any]]:
    return [plan.as_json() for plan in PLANS.values()]

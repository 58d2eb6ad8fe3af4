"""`GET /plans`: the plan catalogue, public, served from the cache with an ETag and 304s."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from upak.domain.billing import PLANS
from upak.web.http_cache import public_json
from upak.web.openapi import not_modified
from upak.web.schemas import Plan
from upak.web.services import services_of

router = APIRouter(tags=["billing"])

# Browsers and proxies may reuse the catalogue this long, then revalidate (a 304).
PLANS_MAX_AGE = 60
# Invalidate this tag when the catalogue changes.
PLANS_TAG = "plans"


async def catalogue() -> list[dict[str, Any]]:
    return [plan.as_json() for plan in PLANS.values()]


@router.get("/plans", response_model=list[Plan], responses=not_modified())
async def list_plans(request: Request) -> Response:
    cache = services_of(request).cache
    return await public_json(
        request, cache, "plans:list", catalogue, max_age=PLANS_MAX_AGE, tags=[PLANS_TAG]
    )

"""`GET /plans`: the plan catalogue, public, served from the cache with an ETag and 304s.

The route is declared for FastAPI (routing of other methods, OpenAPI); `GET /plans` itself is
answered by `hot_list_plans` (`upak.web.hot_routes`), the same answer without FastAPI's
per-request machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Scope

from upak.domain.billing import PLANS
from upak.features.cache import Cache, PrefetchedRead
from upak.web.hot_routes import PREFETCHED, HotEndpoint, Prefetched
from upak.web.http_cache import (
    Answer,
    RepresentationAnswers,
    cached_representation,
    public_cache_control,
    public_json,
)
from upak.web.openapi import not_modified
from upak.web.schemas import Plan
from upak.web.services import services_of

router = APIRouter(tags=["billing"])

# Browsers and proxies may reuse the catalogue this long, then revalidate (a 304).
PLANS_MAX_AGE = 60
# Invalidate this tag when the catalogue changes.
PLANS_TAG = "plans"
PLANS_KEY = "plans:list"
_TAGS = (PLANS_TAG,)
_CACHE_CONTROL = public_cache_control(PLANS_MAX_AGE)


async def catalogue() -> list[dict[str, Any]]:
    return [plan.as_json() for plan in PLANS.values()]


@router.get("/plans", response_model=list[Plan], responses=not_modified())
async def list_plans(request: Request) -> Response:
    cache = services_of(request).cache
    return await public_json(
        request, cache, PLANS_KEY, catalogue, max_age=PLANS_MAX_AGE, tags=_TAGS
    )


def hot_list_plans(cache: Cache) -> HotEndpoint:
    """`GET /plans` as a raw ASGI endpoint over `cache`: what `list_plans` answers."""
    answers = RepresentationAnswers(_CACHE_CONTROL.encode(), None)

    async def list_plans_hot(scope: Scope) -> Answer:
        representation = await cached_representation(
            cache, PLANS_KEY, catalogue, tags=_TAGS, prefetched=_prefetched(scope)
        )
        return answers.answer(scope, representation)

    return list_plans_hot


def _prefetched(scope: Scope) -> PrefetchedRead | None:
    prefetched: Prefetched | None = scope.get(PREFETCHED)
    return None if prefetched is None else prefetched[1]


def prefetch_plans(cache: Cache) -> Callable[[int | None], PrefetchedRead]:
    """The read `list_plans_hot` makes, to start ahead of it (`upak.web.hot_routes.HotReads`):
    the same for everyone."""
    return lambda user_id: cache.prefetch(PLANS_KEY, _TAGS)

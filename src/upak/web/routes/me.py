"""`GET /me`: the caller's account, served from the cache with a private ETag.

The session middleware already knows who is calling, so a cache hit costs no database read;
a payment that changes the subscription drops the entry (`Cache.invalidate_user`). While the
database is away a cached document is still served: it cannot be stale from a payment, since
none can land meanwhile; a miss answers 503 (see `upak.web.problems`).

The route is declared for FastAPI (its OpenAPI entry and session security, routing of other
methods); `GET /me` itself is answered by `hot_me` (`upak.web.hot_routes`): the session from
the scope the session middleware filled, the same answer without dependency solving.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from starlette.types import Scope

from upak.domain.accounts import get_user
from upak.domain.models import User
from upak.features.cache import Cache, PrefetchedRead
from upak.features.sessions import LoginSession
from upak.web.dependencies import not_logged_in, require_session
from upak.web.hot_routes import PREFETCHED, HotEndpoint, Prefetched
from upak.web.http_cache import (
    PRIVATE_CACHE_CONTROL,
    PRIVATE_VARY,
    Answer,
    Representation,
    RepresentationAnswers,
    prefetch_private,
    private_representation,
    respond,
)
from upak.web.middleware.sessions import SESSION
from upak.web.openapi import not_modified
from upak.web.schemas import Me
from upak.web.services import Services, get_services

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


async def me_representation(
    services: Services,
    session: LoginSession,
    request: Request,
    prefetched: PrefetchedRead | None = None,
) -> Representation:
    """The caller's /me document, rendered, from the cache or (a miss) the database;
    `prefetched`: `prefetch_me`'s read for this session's user."""

    async def load() -> dict[str, Any]:
        async with services.db() as db:
            user = await get_user(db, session.user_id)
        if user is None:
            raise not_logged_in(request, "The account of this session no longer exists.")
        return me_body(user)

    return await private_representation(
        services.cache, session.user_id, "me", load, prefetched=prefetched
    )


@router.get("/me", response_model=Me, responses=not_modified())
async def me(
    request: Request,
    session: LoginSession = Depends(require_session),
    services: Services = Depends(get_services),
) -> Response:
    representation = await me_representation(services, session, request)
    return respond(request, representation, PRIVATE_CACHE_CONTROL, vary=PRIVATE_VARY)


def hot_me(services: Services) -> HotEndpoint:
    """`GET /me` as a raw ASGI endpoint: what `me` answers, `require_session` included."""
    answers = RepresentationAnswers(PRIVATE_CACHE_CONTROL.encode(), PRIVATE_VARY.encode())

    async def me_hot(scope: Scope) -> Answer:
        session: LoginSession | None = scope.get(SESSION)
        request = Request(scope)  # only a reference to the scope; read on a 401 or a miss
        if session is None:
            raise not_logged_in(request)
        prefetched: Prefetched | None = scope.get(PREFETCHED)
        read = None
        if prefetched is not None and prefetched[0] == session.user_id:  # for this user only
            read = prefetched[1]
        representation = await me_representation(services, session, request, read)
        return answers.answer(scope, representation)

    return me_hot


def prefetch_me(cache: Cache) -> Callable[[int | None], PrefetchedRead | None]:
    """The read `me_hot` makes, started for the user the session cookie names
    (`upak.web.hot_routes.HotReads`); nothing without a cookie."""
    return lambda user_id: None if user_id is None else prefetch_private(cache, user_id, "me")

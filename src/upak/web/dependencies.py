"""FastAPI dependencies: the database session, the caller's login session, the caller.

`require_session` reads what the session middleware resolved (no store call of its own);
`require_user` adds the user's row. Both answer 401 with a message that says what to do, and
clear a cookie that no longer names a live session.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncSession

from upak.domain.accounts import get_user
from upak.domain.db import DatabaseUnavailable
from upak.domain.models import User
from upak.features.sessions import LoginSession
from upak.web.middleware.sessions import (
    ENDED,
    MALFORMED,
    PROBLEM,
    SESSION,
    UNCONFIRMED,
    clear_cookie_header,
)
from upak.web.services import Services, get_services, services_of

log = logging.getLogger("upak.web")

_WHY = {
    None: "Not logged in: log in first.",
    ENDED: "The session has ended (expired, logged out or revoked): log in again.",
    MALFORMED: "The session cookie is malformed: log in again.",
    UNCONFIRMED: "The session cannot be confirmed while the session store recovers: retry shortly.",
}


async def get_db(services: Services = Depends(get_services)) -> AsyncIterator[AsyncSession]:
    # While the database is known to be away this raises DatabaseUnavailable at once (503 +
    # Retry-After, see upak.web.problems) instead of waiting out a deadline per request.
    db = services.db()
    try:
        yield db
    finally:
        try:
            await db.close()
        except DatabaseUnavailable as exc:
            # The session ends after the answer went out: its connection died since the
            # route's last statement (whatever it committed stands, the rest is rolled back
            # by the server). There is no one left to tell, and raising would only make
            # uvicorn log a traceback for a request that was answered.
            log.warning("a database session could not close cleanly: %s", exc.reason)


def not_logged_in(request: Request, why: str | None = None) -> HTTPException:
    headers = {"Cache-Control": "no-store"}
    problem = request.scope.get(PROBLEM)
    if problem == UNCONFIRMED and why is None:
        headers["Retry-After"] = "1"  # the cookie stays: it may name a session live in Redis
    elif why is not None or problem is not None:
        headers["Set-Cookie"] = clear_cookie_header(services_of(request).settings)
    return HTTPException(401, why or _WHY[problem], headers=headers)


async def require_session(request: Request) -> LoginSession:
    # async: a plain `def` dependency would cost a worker-thread hop on every request.
    session: LoginSession | None = request.scope.get(SESSION)
    if session is None:
        raise not_logged_in(request)
    return session


async def require_user(
    request: Request,
    session: LoginSession = Depends(require_session),
    db: AsyncSession = Depends(get_db),
) -> User:
    user = await get_user(db, session.user_id)
    if user is None:
        raise not_logged_in(request, "The account of this session no longer exists.")
    return user

"""`/auth/*`: register, log in and out, list and revoke sessions, change the password."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import JSONResponse, Response

from upak.domain import accounts
from upak.domain.passwords import MAX_LENGTH, MIN_LENGTH
from upak.features.sessions import LoginSession
from upak.web.client_ip import client_ip
from upak.web.dependencies import get_db, require_session
from upak.web.middleware.sessions import SESSION, clear_cookie_header, set_cookie_header
from upak.web.openapi import problems
from upak.web.problems import problem
from upak.web.schemas import Account, EmailText, SessionInfo
from upak.web.services import Services, get_services

router = APIRouter(prefix="/auth", tags=["auth"])

NO_STORE = {"Cache-Control": "no-store"}
SET_COOKIE = {"Set-Cookie": {"description": "The session cookie.", "schema": {"type": "string"}}}


class Registration(BaseModel):
    email: EmailText
    password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return accounts.checked_email(value)


class Credentials(BaseModel):
    # No format rules here: a login says one thing for every failure (see accounts).
    email: EmailText
    password: str = Field(max_length=MAX_LENGTH)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=MAX_LENGTH)
    new_password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)


def _account(user: Any) -> dict[str, Any]:
    return {"id": user.id, "email": user.email}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


@router.post(
    "/register",
    status_code=201,
    response_model=Account,
    responses=problems({409: "This email is already registered: log in instead."}),
)
async def register(
    body: Registration,
    db: AsyncSession = Depends(get_db),
    services: Services = Depends(get_services),
) -> Any:
    try:
        user = await accounts.register(db, services.passwords, body.email, body.password)
    except accounts.EmailTaken as exc:
        return problem(409, "Email already registered", str(exc))
    return _account(user)


@router.post(
    "/login",
    response_model=Account,
    responses={
        200: {"description": "Logged in; the session cookie is set.", "headers": SET_COOKIE},
        **problems({401: "Wrong email or password (the same answer for every failure)."}),
    },
)
async def login(
    body: Credentials,
    request: Request,
    db: AsyncSession = Depends(get_db),
    services: Services = Depends(get_services),
) -> Response:
    try:
        user = await accounts.authenticate(db, services.passwords, body.email, body.password)
    except accounts.InvalidCredentials as exc:
        return problem(401, "Login failed", str(exc), headers=dict(NO_STORE))
    previous: LoginSession | None = request.scope.get(SESSION)
    if previous is not None:
        # A login always gets a new id; the one the browser held ends (no fixation, no leftovers).
        await services.sessions.revoke(previous.user_id, previous.handle)
    address = client_ip(request.scope, services.trusted_proxies)
    issued = await services.sessions.create(
        user.id,
        ip="" if address is None else str(address),
        user_agent=request.headers.get("user-agent", ""),
    )
    response = JSONResponse(_account(user), headers=NO_STORE)
    response.headers["Set-Cookie"] = set_cookie_header(services.settings, issued.cookie_value)
    return response


@router.post("/logout", status_code=204, responses={204: {"headers": SET_COOKIE}})
async def logout(request: Request, services: Services = Depends(get_services)) -> Response:
    """Ends the session (if any) and clears the cookie; answers 204 either way."""
    session: LoginSession | None = request.scope.get(SESSION)
    if session is not None:
        await services.sessions.revoke(session.user_id, session.handle)
    headers = {**NO_STORE, "Set-Cookie": clear_cookie_header(services.settings)}
    return Response(status_code=204, headers=headers)


@router.get("/sessions", response_model=list[SessionInfo])
async def list_sessions(
    session: LoginSession = Depends(require_session),
    services: Services = Depends(get_services),
) -> Any:
    return [
        {
            "id": each.handle,
            "created_at": _iso(each.created_at),
            "last_seen_at": _iso(each.last_seen_at),
            "ip": each.ip or None,
            "user_agent": each.user_agent or None,
            "current": each.handle == session.handle,
        }
        for each in await services.sessions.list(session.user_id)
    ]


@router.delete(
    "/sessions/{handle}",
    status_code=204,
    responses=problems({404: "You have no session with this id."}),
)
async def revoke_session(
    handle: str,
    session: LoginSession = Depends(require_session),
    services: Services = Depends(get_services),
) -> Response:
    # Looked up under the caller's own user id: another user's handle is simply not there.
    if not await services.sessions.revoke(session.user_id, handle):
        return problem(404, "No such session", "You have no session with this id.")
    headers = dict(NO_STORE)
    if handle == session.handle:  # revoking the current one is a logout
        headers["Set-Cookie"] = clear_cookie_header(services.settings)
    return Response(status_code=204, headers=headers)


@router.delete("/sessions", status_code=204)
async def revoke_other_sessions(
    session: LoginSession = Depends(require_session),
    services: Services = Depends(get_services),
) -> Response:
    await services.sessions.revoke_others(session.user_id, session.handle)
    return Response(status_code=204)


@router.post(
    "/password",
    status_code=204,
    responses=problems({403: "The current password is wrong, or the origin is refused."}),
)
async def change_password(
    body: PasswordChange,
    session: LoginSession = Depends(require_session),
    db: AsyncSession = Depends(get_db),
    services: Services = Depends(get_services),
) -> Response:
    try:
        await accounts.change_password(
            db, services.passwords, session.user_id, body.current_password, body.new_password
        )
    except accounts.AccountError as exc:
        return problem(403, "Password not changed", str(exc))
    # Whoever else held a session (perhaps the reason for the change) is logged out.
    await services.sessions.revoke_others(session.user_id, session.handle)
    return Response(status_code=204)

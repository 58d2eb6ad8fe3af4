"""`/auth/*`: register, log in and out, list and revoke sessions, change the password."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import AfterValidator, BaseModel, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import JSONResponse, Response

from upak.domain import accounts
from upak.domain.passwords import MAX_LENGTH, MIN_LENGTH, PasswordsBusy
from upak.features.sessions import IssuedSession, LoginSession
from upak.web.client_ip import client_ip
from upak.web.dependencies import get_db, require_session
from upak.web.middleware.ratelimit import record_failed_attempt
from upak.web.middleware.sessions import SESSION, clear_cookie_header, set_cookie_header
from upak.web.openapi import problems
from upak.web.problems import problem
from upak.web.schemas import Account, EmailText, Registered, SessionInfo
from upak.web.services import Services, get_services

router = APIRouter(prefix="/auth", tags=["auth"])

# What JSON Schema cannot say about a new password: the server's own rule besides the length.
# A new password: its length in the schema, and what JSON Schema cannot say in its description;
# the policy itself (upak.domain.passwords) runs as the validator.
NewPassword = Annotated[
    str,
    Field(
        min_length=MIN_LENGTH,
        max_length=MAX_LENGTH,
        json_schema_extra={"format": "password"},
        description="Refused when it is one of the most common passwords (a list shipped with "
        "the service), also when repeated, followed by digits or punctuation, or a keyboard run.",
    ),
    AfterValidator(accounts.check_password),
]

NO_STORE = {"Cache-Control": "no-store"}
SET_COOKIE = {"Set-Cookie": {"description": "The session cookie.", "schema": {"type": "string"}}}


class Registration(BaseModel):
    email: EmailText
    password: NewPassword

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
    new_password: NewPassword


async def passwords_busy(request: Request, exc: Exception) -> Response:
    """Every Argon2 slot and queue place is taken (PASSWORD_HASH_CONCURRENCY and _QUEUE):
    503 at once, rather than queueing more CPU behind a flood."""
    retry = PasswordsBusy.retry_after
    return problem(
        503,
        "Too many password checks at once",
        f"Retry in {retry} s.",
        headers={**NO_STORE, "Retry-After": str(retry)},
        retry_after=retry,
    )


def _account(user: Any) -> dict[str, Any]:
    return {"id": user.id, "email": user.email}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


@router.post(
    "/register",
    status_code=201,
    response_model=Registered,
)
async def register(
    body: Registration,
    db: AsyncSession = Depends(get_db),
    services: Services = Depends(get_services),
) -> Any:
    services.passwords.ensure_room()
    # The same answer whether or not the email was free (see upak.domain.accounts): no id,
    # which a taken email could not give. The account's id comes with the first login.
    await accounts.register(db, services.passwords, body.email, body.password)
    return {
        "email": body.email,
        "detail": "Registered, unless this email has an account already: log in to continue.",
    }


async def _new_session(request: Request, services: Services, user_id: int) -> IssuedSession:
    address = client_ip(request.scope)
    return await services.sessions.create(
        user_id,
        ip="" if address is None else str(address),
        user_agent=request.headers.get("user-agent", ""),
    )


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
    services.passwords.ensure_room()
    try:
        user = await accounts.authenticate(db, services.passwords, body.email, body.password)
    except accounts.InvalidCredentials as exc:
        await record_failed_attempt(request.scope)
        return problem(401, "Login failed", str(exc), headers=dict(NO_STORE))
    previous: LoginSession | None = request.scope.get(SESSION)
    if previous is not None:
        # A login always gets a new id; the one the browser held ends (no fixation, no leftovers).
        await services.sessions.revoke(previous.user_id, previous.handle)
    issued = await _new_session(request, services, user.id)
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
    request: Request,
    session: LoginSession = Depends(require_session),
    db: AsyncSession = Depends(get_db),
    services: Services = Depends(get_services),
) -> Response:
    services.passwords.ensure_room()
    try:
        await accounts.change_password(
            db, services.passwords, session.user_id, body.current_password, body.new_password
        )
    except accounts.AccountError as exc:
        await record_failed_attempt(request.scope)
        return problem(403, "Password not changed", str(exc))
    # A new session id, as a login gives (whoever learnt the old cookie, perhaps the reason
    # for the change, holds nothing now); every other session is logged out with it.
    issued = await _new_session(request, services, session.user_id)
    await services.sessions.revoke_others(session.user_id, issued.session.handle)
    headers = {**NO_STORE, "Set-Cookie": set_cookie_header(services.settings, issued.cookie_value)}
    return Response(status_code=204, headers=headers)

"""Resolve the session cookie once per request: `scope["upak.session"]`.

Pure ASGI, so everything downstream (the rate limiter keys limits by `user_id`, routes,
dependencies) reads the same resolved `LoginSession` or None without another store call.
`scope["upak.session_problem"]` says why there is none when a cookie was sent, so a 401 can
tell "log in" from "your session ended" from "this cookie is not ours".

The cookie itself is defined here too: `upak_session`, or `__Host-upak_session` in
production (the prefix makes browsers refuse it unless Secure, Path=/ and host-only, so a
sibling subdomain cannot plant one), HttpOnly, SameSite=Lax.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from upak.config import Settings
from upak.features.sessions import LoginSession, SessionManager, parse_cookie
from upak.store import Mode

SESSION = "upak.session"
PROBLEM = "upak.session_problem"
MALFORMED = "malformed"  # not a value this service issues (or an oversized Cookie header)
ENDED = "ended"  # well-formed, but no live session: expired, revoked, or never issued
# Not found while the store serves from process memory: the session may well be live in
# Redis, so the 401 that follows keeps the cookie (the client retries and is back once Redis
# is, instead of being logged out by an outage).
UNCONFIRMED = "unconfirmed"

# Browsers send at most ~4 KB per cookie; a Cookie header past this is not one of our clients.
MAX_COOKIE_HEADER = 8192


def cookie_name(settings: Settings) -> str:
    return "__Host-upak_session" if settings.production else "upak_session"


def _attributes(settings: Settings) -> str:
    return "Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if settings.production else "")


def set_cookie_header(settings: Settings, value: str) -> str:
    # Max-Age = the absolute timeout: the browser keeps it across restarts, the server decides.
    max_age = settings.session_max_age
    return f"{cookie_name(settings)}={value}; Max-Age={max_age}; {_attributes(settings)}"


def clear_cookie_header(settings: Settings) -> str:
    return f"{cookie_name(settings)}=; Max-Age=0; {_attributes(settings)}"


def session_cookie_value(scope: Scope, name: str) -> tuple[str | None, bool]:
    """(the first cookie called `name`, whether the Cookie header is oversized)."""
    wanted = name.encode("latin-1")
    size = 0
    found: bytes | None = None
    for header, value in scope.get("headers", ()):
        if header != b"cookie":
            continue
        size += len(value)
        if size > MAX_COOKIE_HEADER:
            return None, True
        if found is None:
            for pair in value.split(b";"):
                key, sep, cookie = pair.strip().partition(b"=")
                if sep and key == wanted:
                    found = cookie.strip()
                    break
    return (None if found is None else found.decode("latin-1")), False


class SessionMiddleware:
    """`ahead(scope, user_id)`, when given, runs just before the lookup, with the user id the
    cookie names (None without a well-formed cookie; not yet confirmed): a store read it
    starts goes to Redis in the same write (`upak.web.hot_routes.HotReads`)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        sessions: SessionManager,
        settings: Settings,
        ahead: Callable[[Scope, int | None], None] | None = None,
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.name = cookie_name(settings)
        self.ahead = ahead

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            session, problem = await self._resolve(scope)
            scope[SESSION] = session
            scope[PROBLEM] = problem
        await self.app(scope, receive, send)

    async def _resolve(self, scope: Scope) -> tuple[LoginSession | None, str | None]:
        value, oversized = session_cookie_value(scope, self.name)
        cookie = None if oversized or not value else parse_cookie(value)
        if self.ahead is not None and scope["type"] == "http":
            self.ahead(scope, None if cookie is None else cookie.user_id)
        if oversized:
            return None, MALFORMED
        if value is None or value == "":
            return None, None
        if cookie is None:
            return None, MALFORMED
        session = await self.sessions.resolve(cookie)
        if session is not None:
            return session, None
        return None, UNCONFIRMED if self.sessions.store.mode is Mode.MEMORY else ENDED

"""What the session feature hands out: a live session, and a new one with its cookie."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoginSession:
    """A live session. Holds no secret: the token never leaves `SessionManager`."""

    user_id: int
    handle: str
    created_at: float
    last_seen_at: float
    expires_at: float  # the absolute end (SESSION_MAX_AGE after login)
    ip: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class IssuedSession:
    """A new session and the cookie value that carries it (shown once, never logged)."""

    session: LoginSession
    cookie_value: str = field(repr=False)

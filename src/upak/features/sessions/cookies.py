"""The session cookie, `<user id>.<token>`, and the handle the store knows a session by.

The handle is the first 128 bits of SHA-256(token): the store never holds the token itself.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

TOKEN_BYTES = 32  # 256 bits
HANDLE_HEX = 32  # 128 bits of SHA-256(token)
MAX_COOKIE_VALUE = 64
_COOKIE = re.compile(r"([1-9][0-9]{0,17})\.([A-Za-z0-9_-]{43})")
_HANDLE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class SessionCookie:
    user_id: int
    token: str = field(repr=False)

    @property
    def handle(self) -> str:
        return handle_of(self.token)


def handle_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:HANDLE_HEX]


def parse_cookie(value: str) -> SessionCookie | None:
    """The cookie's parts, or None when it is not a value this service could have issued."""
    if len(value) > MAX_COOKIE_VALUE:
        return None
    match = _COOKIE.fullmatch(value)
    if match is None:
        return None
    return SessionCookie(int(match.group(1)), match.group(2))


def is_handle(text: str) -> bool:
    return _HANDLE.fullmatch(text) is not None

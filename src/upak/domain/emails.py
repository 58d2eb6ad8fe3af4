"""Email addresses: the identity key (shared by accounts and the login rate limit) and the
spelling shown back to the user.

RFC 5321 lets a server treat local parts case-sensitively, but no mail provider in use does,
and two accounts for `Alice@x` and `alice@x` are a takeover waiting to happen (a reset mail or
a support request for one reaches the other). So identity case-folds the whole address
(`str.casefold`, Unicode-aware: `STRASSE@` and `straße@` are one key), and the user's own
spelling is kept for display.
"""

from __future__ import annotations


def _parts(email: str) -> tuple[str, str]:
    text = email.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("an email address has the form name@domain")
    return local, domain


def email_key(email: str) -> str:
    """The identity of an address: trimmed and case-folded whole.

    Raises ValueError when there is no `local@domain` to normalise.
    """
    local, domain = _parts(email)
    return f"{local}@{domain}".casefold()


def display_email(email: str) -> str:
    """The address as the user spelled it: trimmed, the domain lower-cased (DNS ignores case)."""
    local, domain = _parts(email)
    return f"{local}@{domain.lower()}"

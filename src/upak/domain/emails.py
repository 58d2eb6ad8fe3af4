"""Email normalisation: one definition for accounts and for the login rate limit's key."""

from __future__ import annotations


def normalize_email(email: str) -> str:
    """Trim, and case-fold the domain (the local part is case-sensitive by RFC 5321).

    Raises ValueError when there is no `local@domain` to normalise.
    """
    text = email.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("an email address has the form name@domain")
    return f"{local}@{domain.casefold()}"

"""Accounts: register, log in (authenticate), change the password.

An account is found by its email key (`upak.domain.emails.email_key`, the case-folded address,
shared with the login rate limit); the user's own spelling is kept for display.

Neither login nor registration tells a stranger whether an email has an account:

* a failed login says the same thing, and costs the same Argon2 work, whether the email is
  unknown or the password is wrong;
* registering an email that is taken answers exactly what registering a free one answers, after
  the same Argon2 work, and changes nothing: the owner's account and password stay as they
  were. Whoever registered learns whether the account is theirs only by logging in with the
  password they chose, which tells them no more than any login does.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from upak.domain.emails import display_email, email_key
from upak.domain.models import User
from upak.domain.passwords import Passwords, check_password

BAD_CREDENTIALS = "Incorrect email or password."

__all__ = [
    "AccountError",
    "InvalidCredentials",
    "WrongPassword",
    "authenticate",
    "change_password",
    "check_password",
    "checked_email",
    "get_user",
    "register",
]


class AccountError(Exception):
    """A request the accounts service refuses; the message is safe to show the client."""


class InvalidCredentials(AccountError):
    def __init__(self) -> None:
        super().__init__(BAD_CREDENTIALS)


class WrongPassword(AccountError):
    def __init__(self) -> None:
        super().__init__("The current password is incorrect.")


def checked_email(email: str) -> str:
    """A new account's email as the user spelled it (trimmed); ValueError saying what is wrong."""
    try:
        validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return display_email(email)


async def get_user(db: AsyncSession, user_id: int) -> User | None:
    return await db.get(User, user_id)


async def register(
    db: AsyncSession, passwords: Passwords, email: str, password: str
) -> User | None:
    """Create an account; None when the email (its key) has one already, after the same
    hashing work, so neither the answer nor its timing tells the two apart."""
    email = checked_email(email)
    check_password(password)
    password_hash = await passwords.hash(password)
    key = email_key(email)
    if await _by_email_key(db, key) is not None:
        return None
    user = User(email=email, email_key=key, password_hash=password_hash)
    db.add(user)
    try:
        await db.commit()
    except IntegrityError:  # a concurrent registration of the same email won the race
        await db.rollback()
        return None
    return user


async def authenticate(db: AsyncSession, passwords: Passwords, email: str, password: str) -> User:
    """The user these credentials belong to, or InvalidCredentials (one message for all)."""
    try:
        user = await _by_email_key(db, email_key(email))
    except ValueError:
        user = None
    if user is None:
        await passwords.verify_nobody(password)
        raise InvalidCredentials
    if not await passwords.verify(user.password_hash, password):
        raise InvalidCredentials
    if passwords.needs_rehash(user.password_hash):
        # The parameters were raised since this hash was made: upgrade it while we hold
        # the plain password, the only moment we ever can.
        user.password_hash = await passwords.hash(password)
        await db.commit()
    return user


async def change_password(
    db: AsyncSession, passwords: Passwords, user_id: int, current: str, new: str
) -> User:
    """Replace the password after checking the current one (WrongPassword otherwise)."""
    check_password(new)
    user = await get_user(db, user_id)
    if user is None or not await passwords.verify(user.password_hash, current):
        raise WrongPassword
    user.password_hash = await passwords.hash(new)
    await db.commit()
    return user


async def _by_email_key(db: AsyncSession, key: str) -> User | None:
    return (await db.execute(select(User).where(User.email_key == key))).scalar_one_or_none()

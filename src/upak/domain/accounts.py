"""Accounts: register, log in (authenticate), change the password.

Emails are compared in one normalised form (`upak.domain.emails.normalize_email`, shared with
the login rate limit). A failed login says the same thing, and costs the same Argon2 work,
whether the email is unknown or the password is wrong.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from upak.domain.emails import normalize_email
from upak.domain.models import User
from upak.domain.passwords import MAX_LENGTH, MIN_LENGTH, Passwords

BAD_CREDENTIALS = "Incorrect email or password."


class AccountError(Exception):
    """A request the accounts service refuses; the message is safe to show the client."""


class EmailTaken(AccountError):
    def __init__(self) -> None:
        super().__init__("An account with this email already exists; log in instead.")


class InvalidCredentials(AccountError):
    def __init__(self) -> None:
        super().__init__(BAD_CREDENTIALS)


class WrongPassword(AccountError):
    def __init__(self) -> None:
        super().__init__("The current password is incorrect.")


def checked_email(email: str) -> str:
    """The normalised form of a new account's email; ValueError saying what is wrong."""
    try:
        validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return normalize_email(email)


def check_password(password: str) -> str:
    """ValueError unless the password's length is within the policy."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise ValueError(f"a password has {MIN_LENGTH} to {MAX_LENGTH} characters")
    return password


async def get_user(db: AsyncSession, user_id: int) -> User | None:
    return await db.get(User, user_id)


async def register(db: AsyncSession, passwords: Passwords, email: str, password: str) -> User:
    """Create an account. EmailTaken when the normalised email already has one."""
    email = checked_email(email)
    check_password(password)
    if await _by_email(db, email) is not None:
        raise EmailTaken
    user = User(email=email, password_hash=await passwords.hash(password))
    db.add(user)
    try:
        await db.commit()
    except IntegrityError:  # a concurrent registration of the same email won the race
        await db.rollback()
        raise EmailTaken from None
    return user


async def authenticate(db: AsyncSession, passwords: Passwords, email: str, password: str) -> User:
    """The user these credentials belong to, or InvalidCredentials (one message for all)."""
    try:
        user = await _by_email(db, normalize_email(email))
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


async def _by_email(db: AsyncSession, email: str) -> User | None:
    return (await db.execute(select(User).where(User.email == email))).scalar_one_or_none()

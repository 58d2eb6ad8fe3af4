"""Password hashing: Argon2id (argon2-cffi), off the event loop, with rehash on login; and the
password policy (length, common passwords).

Hashing costs tens of milliseconds of CPU and `memory_cost` KiB of RAM per call, so it runs in
worker threads, at most `max_concurrency` at once, with at most `max_waiting` calls queued
behind them. Past both, `PasswordsBusy` is raised at once (the web layer answers 503 with
Retry-After): a flood of logins, even for unknown emails, cannot queue up minutes of CPU or
memory, and the requests that are admitted keep their latency.

Policy (NIST SP 800-63B-4, section 3.1.1.2, for passwords that are the only factor): at least
15 characters, at most 1024 (so a hash cannot be made to cost more), any characters, no
composition rules, and not one of the common passwords of `data/common-passwords.txt.gz`.
"""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import ParamSpec, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

P = ParamSpec("P")
R = TypeVar("R")

MIN_LENGTH = 15
MAX_LENGTH = 1024
DEFAULT_MAX_WAITING = 4


class PasswordsBusy(Exception):
    """Every hashing slot and every queue place is taken: retry after `retry_after` s."""

    retry_after = 1

    def __init__(self) -> None:
        super().__init__("too many password checks at once; retry in a second")


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list, lower-cased (read once, on first use)."""
    data = resources.files("upak.domain").joinpath("data/common-passwords.txt.gz").read_bytes()
    return frozenset(gzip.decompress(data).decode("utf-8").split())


# Runs a keyboard or a counter produces: "1234567890123456", "qwertyuiopasdfgh".
_RUNS = tuple(
    run
    for base in ("0123456789", "abcdefghijklmnopqrstuvwxyz", "qwertyuiopasdfghjklzxcvbnm")
    for run in (base * 4, base[::-1] * 4)
)
_DECORATION = "0123456789!@#$%^&*.,?_- "


def _unit(text: str) -> str:
    """The shortest piece `text` repeats ("passwordpassword" -> "password")."""
    for size in range(1, len(text) // 2 + 1):
        if len(text) % size == 0 and text[:size] * (len(text) // size) == text:
            return text[:size]
    return text


def is_common(password: str) -> bool:
    """One of the shipped common passwords, also when repeated or followed by digits and
    punctuation, or a run of one or two characters or of a keyboard row or counter
    (NIST SP 800-63B's blocklist: breached, repetitive and sequential passwords).

    The list's entries are mostly shorter than MIN_LENGTH; what makes it matter at 15 is
    that "PasswordPassword" and "password12345678" are the same guess to a cracker.
    """
    text = password.strip().lower()
    if len(set(text)) <= 2 or any(text in run for run in _RUNS):
        return True
    unit = _unit(text)
    common = common_passwords()
    return any(
        candidate in common
        for candidate in {text, unit, text.rstrip(_DECORATION), unit.rstrip(_DECORATION)}
    )


def check_password(password: str) -> str:
    """ValueError, saying what is wrong, unless `password` meets the policy."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise ValueError(f"a password has {MIN_LENGTH} to {MAX_LENGTH} characters")
    if is_common(password):
        raise ValueError("this password is one of the most common ones; choose another")
    return password


class Passwords:
    """Hash and verify passwords with one Argon2id parameter set, a bounded number at once."""

    def __init__(
        self,
        hasher: PasswordHasher | None = None,
        max_concurrency: int | None = None,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ):
        # argon2-cffi's defaults are RFC 9106's second recommendation (t=3, m=64 MiB, p=4).
        self.hasher = hasher or PasswordHasher(type=Type.ID)
        if self.hasher.type is not Type.ID:
            raise ValueError("passwords are hashed with Argon2id only")
        # Default: half the CPUs. Each hash runs `parallelism` threads of its own, and the
        # event loop needs a core to answer (503s included) while hashes run.
        self.max_concurrency = max_concurrency or max(1, (os.cpu_count() or 2) // 2)
        self.max_waiting = max_waiting
        self._slots = asyncio.Semaphore(self.max_concurrency)
        self._waiting = 0
        self.refused = 0  # calls answered PasswordsBusy (for /metrics and the bench)
        self._dummy: str | None = None

    def __repr__(self) -> str:
        p = self.hasher
        return f"Passwords(argon2id t={p.time_cost} m={p.memory_cost} p={p.parallelism})"

    def ensure_room(self) -> None:
        """PasswordsBusy now if a hash asked for now would be refused: a route calls this
        first, so a refusal costs no database query either."""
        if self._slots.locked() and self._waiting >= self.max_waiting:
            self.refused += 1
            raise PasswordsBusy

    async def _in_thread(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        self.ensure_room()
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        # The slot is freed when the thread ends, not when the caller stops waiting: a
        # cancelled request (client gone) must not let more hashes run than the bound.
        work = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        work.add_done_callback(lambda _: self._slots.release())
        return await asyncio.shield(work)

    async def hash(self, password: str) -> str:
        return await self._in_thread(self.hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """True when `password` matches; a corrupt stored hash is a mismatch, not an error."""
        try:
            return await self._in_thread(self.hasher.verify, password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify_nobody(self, password: str) -> bool:
        """Spend what `verify` spends, for a login whose email matches no user.

        An unknown email and a wrong password then take the same time, so response timing
        does not tell which emails have accounts. Always False.
        """
        if self._dummy is None:
            self._dummy = await self.hash(os.urandom(16).hex())
        await self.verify(self._dummy, password)
        return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than the current ones."""
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except (InvalidHashError, ValueError):
            return True


def passwords_from_settings(concurrency: int | None, queue: int) -> Passwords:
    """The service's hasher: PASSWORD_HASH_CONCURRENCY and PASSWORD_HASH_QUEUE."""
    return Passwords(max_concurrency=concurrency, max_waiting=queue)


def fast_passwords_for_tests(
    max_concurrency: int | None = None, max_waiting: int = DEFAULT_MAX_WAITING
) -> Passwords:
    """Argon2id with the smallest parameters: for test suites only, never for a service."""
    return Passwords(
        PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID),
        max_concurrency=max_concurrency,
        max_waiting=max_waiting,
    )

"""Password hashing: Argon2id (argon2-cffi), off the event loop, with rehash on login.

Hashing costs tens of milliseconds of CPU and `memory_cost` KiB of RAM per call, so it runs in
worker threads, at most `max_concurrency` at once: a burst of logins queues instead of taking
the event loop or the machine's memory with it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

P = ParamSpec("P")
R = TypeVar("R")

MIN_LENGTH = 8
MAX_LENGTH = 1024


class Passwords:
    """Hash and verify passwords with one Argon2id parameter set."""

    def __init__(self, hasher: PasswordHasher | None = None, max_concurrency: int | None = None):
        # argon2-cffi's defaults are RFC 9106's second recommendation (t=3, m=64 MiB, p=4).
        self.hasher = hasher or PasswordHasher(type=Type.ID)
        if self.hasher.type is not Type.ID:
            raise ValueError("passwords are hashed with Argon2id only")
        self._slots = asyncio.Semaphore(max_concurrency or os.cpu_count() or 2)
        self._dummy: str | None = None

    def __repr__(self) -> str:
        p = self.hasher
        return f"Passwords(argon2id t={p.time_cost} m={p.memory_cost} p={p.parallelism})"

    async def _in_thread(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        async with self._slots:
            return await asyncio.to_thread(fn, *args, **kwargs)

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


def fast_passwords_for_tests() -> Passwords:
    """Argon2id with the smallest parameters: for test suites only, never for a service."""
    return Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID))

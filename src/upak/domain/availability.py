"""Whether the database answers: a breaker tripped by real calls, closed by a background check.

The Redis discipline, applied to the database. A call that finds the database down or hung
(`DatabaseUnavailable`, see `upak.domain.db`) trips the breaker; while it is open, calls fail
at once with the same error instead of each waiting out a deadline on a hung server. One
background check (`SELECT 1`, within the call deadline) runs every `interval` seconds,
finds an outage without traffic, and closes the breaker by itself when the database answers
again: no restart. `/health` reads `state` and never touches the database itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from upak.domain.db import DatabaseUnavailable, unavailable_reason

log = logging.getLogger("upak.db")

State = Literal["ok", "down"]


class DatabaseAvailability:
    """The breaker. `trip(reason)` opens it; a passing check closes it."""

    def __init__(
        self,
        *,
        interval: float,
        deadline: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.deadline = deadline
        self.clock = clock
        self.state: State = "ok"
        self.reason: str | None = None
        self.since: float = clock()
        self.outages = 0
        self.checks = 0  # checks finished, passed or not
        self._task: asyncio.Task[None] | None = None

    @property
    def down(self) -> bool:
        return self.state == "down"

    def trip(self, reason: str) -> None:
        if self.state == "down":
            return
        self.state, self.reason, self.since = "down", reason, self.clock()
        self.outages += 1
        log.error("database unavailable (%s); answering 503 until it answers again", reason)

    def restore(self) -> None:
        if self.state == "ok":
            return
        log.warning("database back after %.1fs", self.clock() - self.since)
        self.state, self.reason, self.since = "ok", None, self.clock()

    def refuse_while_down(self) -> None:
        """Fail fast: raise DatabaseUnavailable while the breaker is open."""
        if self.state == "down":
            raise DatabaseUnavailable(self.reason or "down")

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"database": self.state}
        if self.reason is not None:
            body["database_reason"] = self.reason
        return body

    async def check(self, ping: Callable[[], Awaitable[object]]) -> bool:
        """One check: the breaker follows what `ping` found, within the deadline."""
        try:
            async with asyncio.timeout(self.deadline):
                await ping()
        except Exception as exc:
            reason = unavailable_reason(exc) or f"the check failed ({type(exc).__name__})"
            self.trip(reason)
            return False
        finally:
            self.checks += 1
        self.restore()
        return True

    def start(self, engine: AsyncEngine) -> None:
        """Check `engine` every `interval` seconds until `close()`."""

        async def ping() -> None:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        async def run() -> None:
            while True:
                await self.check(ping)
                await asyncio.sleep(self.interval)

        if self._task is None:
            self._task = asyncio.create_task(run(), name="database-availability")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

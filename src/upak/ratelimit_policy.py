"""Rate-limit policies as text: `N/period`, several joined by `;`.

A value type of the settings, below every layer: `upak.config` parses each RATE_LIMIT_*
variable into limits once, at start-up (a typo stops it), and the rate limiter reads them.
Pure (stdlib only), so config imports nothing heavier and no feature.

    120/minute            at most 120 in any minute (sliding log, exact)
    10/30s;1000/1h        both limits at once
    100/minute:gcra       GCRA instead: a burst of 100, then one every 0.6 s (O(1) memory)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Algorithm = Literal["window", "gcra"]

POLICY_SYNTAX = (
    "N/period with period second, minute, hour, day or a count with a unit "
    "(10/30s, 1000/1h), optionally :gcra, several joined by ';' (e.g. 10/second;100/minute)"
)

_UNIT_MS = {
    "ms": 1,
    "s": 1000,
    "sec": 1000,
    "second": 1000,
    "seconds": 1000,
    "m": 60_000,
    "min": 60_000,
    "minute": 60_000,
    "minutes": 60_000,
    "h": 3_600_000,
    "hour": 3_600_000,
    "hours": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
    "days": 86_400_000,
}
_LIMIT = re.compile(r"^(\d{1,9})\s*/\s*(\d{0,9})\s*([a-z]+)(?:\s*:\s*([a-z]+))?$")
_MAX_WINDOW_MS = 366 * 86_400_000  # a key lives for one window; a year is plenty


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `amount` requests of one key in any `window_ms` interval."""

    amount: int
    window_ms: int
    algorithm: Algorithm = "window"

    @property
    def window_seconds(self) -> int:
        """The window in whole seconds, as the RateLimit-Policy `w` parameter wants it."""
        return max(1, -(-self.window_ms // 1000))

    def __str__(self) -> str:
        text = f"{self.amount}/{_window_text(self.window_ms)}"
        return text + ":gcra" if self.algorithm == "gcra" else text


def _window_text(window_ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if window_ms % size == 0:
            return f"{window_ms // size}{unit}"
    return f"{window_ms}ms"


def parse_limit(text: str) -> Limit:
    """One `N/period[:gcra]`. Raises ValueError naming what is wrong."""
    match = _LIMIT.match(text.strip().lower())
    if match is None:
        raise ValueError(f"{text.strip()!r} is not of the form N/period")
    amount_text, count_text, unit, algorithm = match.groups()
    if unit not in _UNIT_MS:
        raise ValueError(f"{unit!r} is not a time unit")
    amount = int(amount_text)
    count = int(count_text) if count_text else 1
    if amount < 1 or count < 1:
        raise ValueError(f"{text.strip()!r}: the count and the period must be at least 1")
    window_ms = count * _UNIT_MS[unit]
    if window_ms < 1000:
        raise ValueError(f"{text.strip()!r}: the period must be at least one second")
    if window_ms > _MAX_WINDOW_MS:
        raise ValueError(f"{text.strip()!r}: the period must be at most 366 days")
    if algorithm not in (None, "window", "gcra"):
        raise ValueError(f"{algorithm!r} is not an algorithm (window or gcra)")
    return Limit(amount, window_ms, "gcra" if algorithm == "gcra" else "window")


def parse_policy(text: str) -> tuple[Limit, ...]:
    """`10/second;100/minute` -> its limits. Raises ValueError naming the bad part."""
    parts = [part for part in text.split(";") if part.strip()]
    if not parts:
        raise ValueError("the policy is empty")
    limits = tuple(parse_limit(part) for part in parts)
    if len(set(limits)) != len(limits):
        raise ValueError("the same limit is given twice")
    return limits

"""How a session is stored, as every twin reads it: the hash's fields and whether stored
values are live.
"""

from __future__ import annotations

from collections.abc import Sequence

# Lua numbers are doubles: millisecond timestamps (13 digits) are exact and print whole.

_FIELDS = (b"c", b"s", b"a", b"i", b"ua")  # created, last seen, absolute end, ip, user agent


def _live(values: Sequence[bytes | None], now_ms: int, idle_ms: int) -> bool:
    """Whether stored [c, s, a, …] describe a session neither idle nor past its end."""
    created, seen, abs_end = values[0], values[1], values[2]
    if created is None or seen is None or abs_end is None:
        return False
    return int(abs_end) > now_ms and int(seen) + idle_ms > now_ms

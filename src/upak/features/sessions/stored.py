"""How a session is stored, as every twin reads it: the hash's fields, the key a script
derives from the index key, whether stored values are live, and a write-back's moved clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from upak.store import Arg

# Lua numbers are doubles: millisecond timestamps (13 digits) are exact and print whole.

_FIELDS = (b"c", b"s", b"a", b"i", b"ua")  # created, last seen, absolute end, ip, user agent
_BASE_OF_INDEX = "local base = string.sub(KEYS[{i}], 1, -6)"  # "…:{u42}:index" -> "…:{u42}:"


def _live(values: Sequence[bytes | None], now_ms: int, idle_ms: int) -> bool:
    """Whether stored [c, s, a, …] describe a session neither idle nor past its end."""
    created, seen, abs_end = values[0], values[1], values[2]
    if created is None or seen is None or abs_end is None:
        return False
    return int(abs_end) > now_ms and int(seen) + idle_ms > now_ms


def _base_of(index_key: str) -> str:
    return index_key[: -len("index")]


def _ms_later(position: int) -> Callable[[Sequence[Arg], int], Sequence[Arg] | None]:
    """replay_args: the call's `now` moved on by the time its write-back waited."""

    def shift(args: Sequence[Arg], elapsed_ms: int) -> Sequence[Arg]:
        shifted = list(args)
        shifted[position] = int(shifted[position]) + elapsed_ms
        return shifted

    return shift

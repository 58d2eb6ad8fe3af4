"""The store's vocabulary, below everything else in it: what an argument is, where calls
are served, and the error a misused operation raises."""

from __future__ import annotations

import enum

Arg = str | bytes | int | float


class Mode(enum.StrEnum):
    """Where state operations are served right now."""

    REDIS = "redis"
    MEMORY = "memory"


class StoreError(Exception):
    """Redis answered, but not as the operation expects (wrong type, script error)."""

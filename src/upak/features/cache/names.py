"""Cache key and tag names: what a caller may name, a digest for anything else, and the
per-user key and tag (the user id inside the key, so users never share an entry).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

# Printable ASCII without braces (they would change the Cluster hash tag) or spaces.
_SAFE_NAME = re.compile(r"^[!-z|~]{1,200}$")


def _safe(name: str, what: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ValueError(
            f"cache {what} {name!r:.60} must be 1-200 printable ASCII characters without "
            "spaces or braces; hash anything else (see `digest`)"
        )
    return name


def digest(*parts: Any) -> str:
    """A short stable name for arbitrary key material (JSON-able values), safe in any key."""
    try:
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise TypeError(
            "cache key arguments must be JSON values (str, int, float, bool, None, lists, "
            "dicts); exclude others from the key with `key_args=`"
        ) from None
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def user_tag(user_id: Any) -> str:
    """The tag every per-user entry carries: invalidate it when the user's data changes."""
    return f"user:{_user_part(user_id)}"


def user_key(user_id: Any, name: str) -> str:
    """A per-user key: the user id is part of the key, so users never share an entry."""
    return f"u:{_user_part(user_id)}:{_safe(name, 'key')}"


def _user_part(user_id: Any) -> str:
    if user_id is None or user_id == "":
        raise ValueError("a per-user cache entry needs a user id (got none)")
    text = str(user_id)
    return text if _SAFE_NAME.match(text) and len(text) <= 64 else "h" + digest(text)

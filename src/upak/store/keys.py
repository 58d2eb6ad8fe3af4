"""Key names, in one place: REDIS_KEY_PREFIX + feature + id.

Keys one script touches together share a hash tag (`{…}`), so on Redis Cluster they land in
one slot and the script stays atomic.
"""

from __future__ import annotations

from dataclasses import dataclass

FEATURES = ("replay", "ratelimit", "cache", "sessions")


@dataclass(frozen=True)
class KeySpace:
    prefix: str = "upak:"

    def key(self, feature: str, *parts: str) -> str:
        """`upak:replay:abc`: a key that no script shares with another."""
        return ":".join((self.prefix + feature, *parts))

    def tagged(self, feature: str, tag: str, *parts: str) -> str:
        """`upak:sessions:{user42}:index`: keys with one tag share a Cluster slot."""
        return ":".join((f"{self.prefix}{feature}:{{{tag}}}", *parts))

    def pattern(self, feature: str | None = None) -> str:
        """A SCAN pattern for all of UPAK's keys, or one feature's."""
        return f"{self.prefix}{feature}:*" if feature else f"{self.prefix}*"

    def feature_of(self, key: str) -> str | None:
        """Which feature a key belongs to (for `upak redis info`), or None."""
        if not key.startswith(self.prefix):
            return None
        feature = key[len(self.prefix) :].split(":", 1)[0]
        return feature if feature in FEATURES else None

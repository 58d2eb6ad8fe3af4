"""The failure model for Redis replies: which errors are a server condition, which are bugs.

Every error Redis can send falls in one of two classes:

* A **server condition** means "Redis cannot serve this now" (it is full, busy running a
  script, loading its dataset, demoted, failing to persist, short of replicas, or the cluster
  lost a slot), as does a lost connection or a timeout. The FailoverStore answers it exactly
  as it answers an outage: memory, journal, write-back when the condition passes.
  Some conditions refuse writes only (`refuses_writes_only`): reads are still served there.
* Anything else Redis answers (WRONGTYPE, a script whose keys span slots, NOSCRIPT after its
  retry, a script error) is a **programming error**: switching every feature to memory would
  hide a bug in one operation, so it stays a `StoreError` and the web layer answers 503.

redis-py maps some error codes to exception classes and strips the code from the message
(OOM, LOADING, READONLY, TRYAGAIN, CLUSTERDOWN, MASTERDOWN); the rest (BUSY, MISCONF,
NOREPLICAS) arrive as a ResponseError whose message starts with the code. Both are read here.
"""

from __future__ import annotations

import enum

import redis.exceptions as rex


class Condition(enum.StrEnum):
    """Why Redis is not serving this process right now (`/health` shows it)."""

    UNREACHABLE = "unreachable"  # connection refused, lost or reset; credentials refused
    TIMEOUT = "timeout"  # no answer within the socket timeout (hung, or slower than it)
    OOM = "oom"  # maxmemory reached under noeviction: writes refused
    BUSY = "busy"  # a script or function runs past busy-reply-threshold
    LOADING = "loading"  # the dataset is still loading after a restart
    READONLY = "readonly"  # a replica, or a master Sentinel demoted under us
    MISCONF = "misconf"  # persistence is failing (stop-writes-on-bgsave-error)
    NOREPLICAS = "noreplicas"  # fewer replicas than min-replicas-to-write
    MASTERDOWN = "masterdown"  # a replica that lost its master (replica-serve-stale-data no)
    TRYAGAIN = "tryagain"  # a cluster slot is migrating
    CLUSTERDOWN = "clusterdown"  # the cluster cannot serve the slot


# Conditions under which Redis still answers reads: only a call that writes is refused.
WRITES_REFUSED = frozenset({Condition.OOM, Condition.MISCONF, Condition.NOREPLICAS})

# Error codes Redis sends for a server condition (the first word of the error reply).
_BY_CODE = {
    "OOM": Condition.OOM,
    "BUSY": Condition.BUSY,
    "LOADING": Condition.LOADING,
    "READONLY": Condition.READONLY,
    "MISCONF": Condition.MISCONF,
    "NOREPLICAS": Condition.NOREPLICAS,
    "MASTERDOWN": Condition.MASTERDOWN,
    "TRYAGAIN": Condition.TRYAGAIN,
    "CLUSTERDOWN": Condition.CLUSTERDOWN,
}

# redis-py's classes for codes whose prefix it strips (subclasses before their bases).
_BY_CLASS: tuple[tuple[type[BaseException], Condition], ...] = (
    (rex.BusyLoadingError, Condition.LOADING),
    (rex.OutOfMemoryError, Condition.OOM),
    (rex.ReadOnlyError, Condition.READONLY),
    (rex.MasterDownError, Condition.MASTERDOWN),
    (rex.ClusterDownError, Condition.CLUSTERDOWN),
    (rex.TryAgainError, Condition.TRYAGAIN),
    (rex.SlotNotCoveredError, Condition.CLUSTERDOWN),
    (rex.TimeoutError, Condition.TIMEOUT),
    (TimeoutError, Condition.TIMEOUT),
    (rex.ConnectionError, Condition.UNREACHABLE),  # also AuthenticationError
    (rex.ClusterError, Condition.CLUSTERDOWN),
    (OSError, Condition.UNREACHABLE),
)


def code_of(message: str) -> Condition | None:
    """The condition an error reply's text names by its code, if any."""
    return _BY_CODE.get(message.split(" ", 1)[0])


def condition_of(exc: BaseException) -> Condition | None:
    """The server condition `exc` reports, or None when it is not one (a programming error,
    or not a Redis error at all)."""
    for cls, condition in _BY_CLASS:
        if isinstance(exc, cls):
            return condition
    if isinstance(exc, rex.ResponseError):
        # A script's own redis.call error carries the code too ("OOM command not allowed…
        # script: …"), so a write refused inside a script reads the same as outside one.
        return code_of(str(exc))
    return None


def refuses_writes_only(condition: Condition | str | None) -> bool:  # str: as FailoverStats has it
    return condition in WRITES_REFUSED

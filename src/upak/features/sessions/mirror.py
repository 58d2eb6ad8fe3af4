"""The mirror: a bounded copy, in this process's memory, of the sessions Redis vouched for,
so an outage does not log out the users this worker served just before it; and CONFIRM,
which after a recovery drops the copies Redis no longer has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from upak.store import MemoryData, Operation
from upak.store.keyspace import KeyRegistry

# A session read from Redis stays in this process's memory for this long after its last use
# (or until it ends), so an outage within that window does not log its user out here...
MIRROR_TTL_MS = 15 * 60 * 1000
# ...and at most this many sessions are mirrored per process (least recently used go first).
# Each costs about 1.2 KB of process memory (tracemalloc): 10 000 are ~12 MB per process.
MIRROR_MAX_SESSIONS = 10_000


def _mirror_registry_key(session_key: str) -> str:
    # Memory only (never sent to Redis): "<prefix>sessions:{u42}:s:h" -> "<prefix>sessions:mirror".
    return session_key.split("{", 1)[0] + "mirror"


_MirrorRegistry = KeyRegistry  # mirrored session key -> its index key, least recent first


def _mirror(
    data: MemoryData,
    keys: Sequence[str],
    handle: str,
    fields: dict[bytes, bytes],
    idle_ms: int,
    now_ms: int,
) -> None:
    """Keep a local copy of a session Redis just vouched for, within the mirror's bounds."""
    session_key, index_key = keys[0], keys[1]
    ends = min(int(fields[b"s"]) + idle_ms, int(fields[b"a"]), now_ms + MIRROR_TTL_MS)
    if ends <= now_ms:
        return
    data.put(session_key, dict(fields), ends)
    data.zadd(index_key, {handle: float(int(fields[b"c"]))})
    if data.pttl(index_key) < ends - now_ms:
        # A whole MIRROR_TTL past what this session needs: the index may outlive its sessions
        # (a member whose session is gone is dropped where it is read), and so it is rewritten
        # about once per MIRROR_TTL per user rather than on every copy (in the host tier a
        # rewrite is the user's whole index, up to MAX_SESSIONS_PER_USER members).
        data.pexpire(index_key, ends - now_ms + MIRROR_TTL_MS)
    if data.bounded_in_bytes:
        return  # the host tier's byte budget bounds the mirror; a registry row would be
        # rewritten whole on every copy, O(sessions) bytes per request
    registry_key = _mirror_registry_key(session_key)
    registry = data.entry(registry_key, _MirrorRegistry)
    if registry is None:
        registry = _MirrorRegistry()
        data.put(registry_key, registry)
    registry[session_key] = index_key
    registry.move_to_end(session_key)
    while len(registry) > MIRROR_MAX_SESSIONS:
        old_key, old_index = registry.popitem(last=False)
        data.delete(old_key)
        data.zrem(old_index, old_key.rsplit(":", 1)[1])


def _forget(data: MemoryData, session_key: str, index_key: str, handle: str) -> None:
    data.delete(session_key)
    data.zrem(index_key, handle)
    registry = data.entry(_mirror_registry_key(session_key), _MirrorRegistry)
    if registry is not None:
        registry.pop(session_key, None)


class Mirrored(NamedTuple):
    """CONFIRM's record: the mirrored session's handle (its index member)."""

    handle: str


# CONFIRM  KEYS: session, index  ARGV: Mirrored  ->  1 while Redis still has the session. Run
# for every mirrored session after a recovery: one revoked on another worker during the
# outage must not be served from this mirror in the next one. Renews nothing.
def _confirm_memory(data: MemoryData, keys: Sequence[str], args: Mirrored) -> int:
    return data.exists(keys[0])


def _remember_confirmed(data: MemoryData, keys: Sequence[str], args: Mirrored, reply: Any) -> None:
    if reply == 0:
        _forget(data, keys[0], keys[1], args.handle)


CONFIRM: Operation[Mirrored, bool] = Operation(
    name="sessions.confirm",
    lua="return redis.call('EXISTS', KEYS[1])",
    args=Mirrored,
    memory=_confirm_memory,
    parse=bool,
    remember=_remember_confirmed,
)
CONFIRM_BATCH = 256

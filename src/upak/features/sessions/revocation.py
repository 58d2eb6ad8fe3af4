"""Ending sessions: REVOKE one (leaving a tombstone), REVOKE_OTHERS (raising the floor)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from upak.features.sessions.mirror import _forget
from upak.store import MemoryData, Operation


class Revocation(NamedTuple):
    """REVOKE's record (its field order is ARGV's)."""

    handle: str
    now_ms: int
    max_age_ms: int  # the tombstone's life when the session's own end is not known here


class RevokeOthers(NamedTuple):
    """REVOKE_OTHERS's record (its field order is ARGV's)."""

    keep_handle: str
    now_ms: int
    floor_ttl_ms: int


# REVOKE  KEYS: session, index, tombstone  ARGV: Revocation  ->  1 when it existed
# The tombstone lives as long as the session could: to its absolute end when it is known here,
# else for a whole max age (it was created at most that long ago).
_REVOKE_LUA = """
local ttl = tonumber(ARGV[3])
local abs = redis.call('HGET', KEYS[1], 'a')
if abs then ttl = tonumber(abs) - tonumber(ARGV[2]) end
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ttl > 0 and redis.call('PTTL', KEYS[3]) < ttl then
  redis.call('SET', KEYS[3], '1', 'PX', math.floor(ttl))
end
return n
"""


def _revoke_memory(data: MemoryData, keys: Sequence[str], args: Revocation) -> int:
    session_key, index_key, tomb_key = keys
    ttl = args.max_age_ms
    abs_end = data.hget(session_key, "a")
    if abs_end is not None:
        ttl = int(abs_end) - args.now_ms
    existed = data.exists(session_key)
    _forget(data, session_key, index_key, args.handle)
    if ttl > 0 and data.pttl(tomb_key) < ttl:
        data.set(tomb_key, "1", px=ttl)
    return existed


def _remember_revoked(data: MemoryData, keys: Sequence[str], args: Revocation, reply: Any) -> None:
    # Revoked on Redis: this process's mirrored copy must go too.
    _revoke_memory(data, keys, args)


def _revoke_replayed(args: Revocation, elapsed_ms: int) -> Revocation | None:
    left = args.max_age_ms - elapsed_ms
    return args._replace(now_ms=args.now_ms + elapsed_ms, max_age_ms=left) if left > 0 else None


REVOKE: Operation[Revocation, bool] = Operation(
    name="sessions.revoke",
    lua=_REVOKE_LUA,
    args=Revocation,
    memory=_revoke_memory,
    parse=bool,
    writeback=True,
    precious=True,  # a dropped revocation is a logged-out session back on Redis
    durable=True,
    replay_args=_revoke_replayed,
    remember=_remember_revoked,
)


# REVOKE_OTHERS  KEYS: index, floor, the user's session keys' prefix (a family)
#                ARGV: RevokeOthers  ->  how many ended
_REVOKE_OTHERS_LUA = """
local n = 0
for _, h in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if h ~= ARGV[1] then
    n = n + redis.call('DEL', KEYS[3] .. h)
    redis.call('ZREM', KEYS[1], h)
  end
end
redis.call('HSET', KEYS[2], 't', ARGV[2], 'k', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return n
"""


def _revoke_others_memory(data: MemoryData, keys: Sequence[str], args: RevokeOthers) -> int:
    index_key, floor_key, sessions = keys
    keep = args.keep_handle.encode()
    ended = 0
    for member, _ in data.zrange_withscores(index_key):
        if member != keep:
            session_key = sessions + member.decode()
            ended += data.exists(session_key)
            _forget(data, session_key, index_key, member.decode())
    data.hset(floor_key, {"t": args.now_ms, "k": args.keep_handle})
    data.pexpire(floor_key, args.floor_ttl_ms)
    return ended


def _remember_revoked_others(
    data: MemoryData, keys: Sequence[str], args: RevokeOthers, reply: Any
) -> None:
    # Ended on Redis: so are this process's mirrored copies, and the floor is raised here too.
    _revoke_others_memory(data, keys, args)


def _floor_ttl_left(args: RevokeOthers, elapsed_ms: int) -> RevokeOthers:
    return args._replace(floor_ttl_ms=max(args.floor_ttl_ms - elapsed_ms, 1))


REVOKE_OTHERS: Operation[RevokeOthers, int] = Operation(
    name="sessions.revoke_others",
    lua=_REVOKE_OTHERS_LUA,
    args=RevokeOthers,
    families=(2,),
    memory=_revoke_others_memory,
    parse=int,
    writeback=True,
    precious=True,
    durable=True,
    replay_args=_floor_ttl_left,
    remember=_remember_revoked_others,
)

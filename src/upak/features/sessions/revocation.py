"""Ending sessions: REVOKE one (leaving a tombstone), REVOKE_OTHERS (raising the floor)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from upak.features.sessions.mirror import _forget
from upak.features.sessions.stored import _BASE_OF_INDEX, _base_of
from upak.store import Arg, MemoryData, Operation
from upak.store.operation import POSITIONAL

# REVOKE  KEYS: session, index, tombstone  ARGV: handle, now, max age  ->  1 when it existed
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


def _revoke_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    session_key, index_key, tomb_key = keys
    ttl = int(args[2])
    abs_end = data.hget(session_key, "a")
    if abs_end is not None:
        ttl = int(abs_end) - int(args[1])
    existed = data.exists(session_key)
    _forget(data, session_key, index_key, str(args[0]))
    if ttl > 0 and data.pttl(tomb_key) < ttl:
        data.set(tomb_key, "1", px=ttl)
    return existed


def _remember_revoked(
    data: MemoryData, keys: Sequence[str], args: Sequence[Arg], reply: Any
) -> None:
    # Revoked on Redis: this process's mirrored copy must go too.
    _revoke_memory(data, keys, args)


def _revoke_replayed(args: Sequence[Arg], elapsed_ms: int) -> Sequence[Arg] | None:
    handle, now, max_age = args
    left = int(max_age) - elapsed_ms
    return (handle, int(now) + elapsed_ms, left) if left > 0 else None


REVOKE: Operation[Sequence[Any], bool] = Operation(
    **POSITIONAL,
    name="sessions.revoke",
    lua=_REVOKE_LUA,
    memory=_revoke_memory,
    parse=bool,
    writeback=True,
    precious=True,  # a dropped revocation is a logged-out session back on Redis
    durable=True,
    replay_args=_revoke_replayed,
    remember=_remember_revoked,
)


# REVOKE_OTHERS  KEYS: index, floor  ARGV: keep handle, now, floor ttl  ->  how many ended
_REVOKE_OTHERS_LUA = """
BASE
local n = 0
for _, h in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if h ~= ARGV[1] then
    n = n + redis.call('DEL', base .. 's:' .. h)
    redis.call('ZREM', KEYS[1], h)
  end
end
redis.call('HSET', KEYS[2], 't', ARGV[2], 'k', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return n
""".replace("BASE", _BASE_OF_INDEX.format(i=1))


def _revoke_others_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    index_key, floor_key = keys
    keep = str(args[0]).encode()
    ended = 0
    for member, _ in data.zrange_withscores(index_key):
        if member != keep:
            session_key = _base_of(index_key) + "s:" + member.decode()
            ended += data.exists(session_key)
            _forget(data, session_key, index_key, member.decode())
    data.hset(floor_key, {"t": args[1], "k": args[0]})
    data.pexpire(floor_key, int(args[2]))
    return ended


def _remember_revoked_others(
    data: MemoryData, keys: Sequence[str], args: Sequence[Arg], reply: Any
) -> None:
    # Ended on Redis: so are this process's mirrored copies, and the floor is raised here too.
    _revoke_others_memory(data, keys, args)


def _floor_ttl_left(args: Sequence[Arg], elapsed_ms: int) -> Sequence[Arg]:
    keep, now, ttl = args
    return (keep, now, max(int(ttl) - elapsed_ms, 1))


REVOKE_OTHERS: Operation[Sequence[Any], int] = Operation(
    **POSITIONAL,
    name="sessions.revoke_others",
    lua=_REVOKE_OTHERS_LUA,
    memory=_revoke_others_memory,
    parse=int,
    writeback=True,
    precious=True,
    durable=True,
    replay_args=_floor_ttl_left,
    remember=_remember_revoked_others,
)

"""Using a session: RESOLVE it (mirrored on the way), TOUCH it (renew the idle timeout),
LIST the user's live ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from upak.features.sessions.mirror import _forget, _mirror
from upak.features.sessions.stored import _FIELDS, _live
from upak.store import MemoryData, Operation


class Use(NamedTuple):
    """RESOLVE's record (its field order is ARGV's)."""

    handle: str
    now_ms: int
    idle_ms: int


class Touch(NamedTuple):
    """TOUCH's record (its field order is ARGV's)."""

    seen_ms: int
    idle_ms: int
    now_ms: int


class Listing(NamedTuple):
    """LIST's record (its field order is ARGV's)."""

    now_ms: int
    idle_ms: int


# RESOLVE  KEYS: session, index  ARGV: Use  ->  [c, s, a, i, ua] or nil
_RESOLVE_LUA = """
local v = redis.call('HMGET', KEYS[1], 'c', 's', 'a', 'i', 'ua')
if not v[1] then return false end
local now = tonumber(ARGV[2])
if not (v[2] and v[3]) or tonumber(v[3]) <= now or tonumber(v[2]) + tonumber(ARGV[3]) <= now then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
return v
"""


def _resolve_memory(data: MemoryData, keys: Sequence[str], args: Use) -> list | None:
    session_key, index_key = keys
    stored = data.hgetall(session_key)
    values = [stored.get(name) for name in _FIELDS]
    if values[0] is None:
        return None
    if not _live(values, args.now_ms, args.idle_ms):
        data.delete(session_key)
        data.zrem(index_key, args.handle)
        return None
    return values


def _remember_resolved(data: MemoryData, keys: Sequence[str], args: Use, reply: Any) -> None:
    if reply is None:
        # Redis says it is gone (revoked elsewhere, expired): no local copy may outlive that.
        _forget(data, keys[0], keys[1], args.handle)
        return
    fields = {name: value or b"" for name, value in zip(_FIELDS, reply, strict=True)}
    _mirror(data, keys, args.handle, fields, args.idle_ms, args.now_ms)


RESOLVE: Operation[Use, list | None] = Operation(
    name="sessions.resolve",
    lua=_RESOLVE_LUA,
    args=Use,
    memory=_resolve_memory,
    remember=_remember_resolved,
    # A session this process has no copy of may be in a Redis that refuses only writes.
    read_through=lambda reply: reply is None,
)


# TOUCH  KEYS: session  ARGV: Touch  ->  1 when renewed. Never creates: a session
# revoked while this request ran stays revoked.
_TOUCH_LUA = """
local v = redis.call('HMGET', KEYS[1], 's', 'a')
if not (v[1] and v[2]) then return 0 end
local seen = v[1]
if tonumber(ARGV[1]) > tonumber(seen) then seen = ARGV[1] end
local ends = math.min(tonumber(seen) + tonumber(ARGV[2]), tonumber(v[2]))
local now = tonumber(ARGV[3])
if ends <= now then return 0 end
redis.call('HSET', KEYS[1], 's', seen)
redis.call('PEXPIRE', KEYS[1], ends - now)
return 1
"""


def _touch_memory(data: MemoryData, keys: Sequence[str], args: Touch) -> int:
    seen_now, abs_end = data.hget(keys[0], "s"), data.hget(keys[0], "a")
    if seen_now is None or abs_end is None:
        return 0
    seen = max(int(seen_now), args.seen_ms)
    ends = min(seen + args.idle_ms, int(abs_end))
    now = args.now_ms
    if ends <= now:
        return 0
    data.hset(keys[0], {"s": seen})
    data.pexpire(keys[0], ends - now)
    return 1


def _touched_later(args: Touch, elapsed_ms: int) -> Touch:
    # Written back later, the touch is judged at the time it lands.
    return args._replace(now_ms=args.now_ms + elapsed_ms)


TOUCH: Operation[Touch, bool] = Operation(
    name="sessions.touch",
    lua=_TOUCH_LUA,
    args=Touch,
    memory=_touch_memory,
    parse=bool,
    writeback=True,
    expendable=True,  # a lost touch only brings an idle timeout nearer
    replay_args=_touched_later,
)


# LIST  KEYS: index, the user's session keys' prefix (a family)  ARGV: Listing
#       ->  [[handle, c, s, a, i, ua], …], dropping ended ones
_LIST_LUA = """
local now = tonumber(ARGV[1])
local idle = tonumber(ARGV[2])
local out = {}
for _, h in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = KEYS[2] .. h
  local v = redis.call('HMGET', key, 'c', 's', 'a', 'i', 'ua')
  if v[1] and v[2] and v[3] and tonumber(v[3]) > now and tonumber(v[2]) + idle > now then
    table.insert(out, {h, v[1], v[2], v[3], v[4], v[5]})
  else
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], h)
  end
end
return out
"""


def _list_memory(data: MemoryData, keys: Sequence[str], args: Listing) -> list[list]:
    index_key, sessions = keys
    now, idle = args.now_ms, args.idle_ms
    out = []
    for member, _ in data.zrange_withscores(index_key):
        session_key = sessions + member.decode()
        stored = data.hgetall(session_key)
        values = [stored.get(name) for name in _FIELDS]
        if _live(values, now, idle):
            out.append([member, *values])
        else:
            _forget(data, session_key, index_key, member.decode())
    return out


LIST: Operation[Listing, list] = Operation(
    name="sessions.list", lua=_LIST_LUA, args=Listing, families=(1,), memory=_list_memory
)

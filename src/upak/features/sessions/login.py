"""CREATE: a new session, its index entry and the per-user cap, refused on replay after
its own logout (the tombstone) or a "log out everywhere else" (the floor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from upak.features.sessions.mirror import _forget, _mirror
from upak.features.sessions.stored import _FIELDS
from upak.store import Arg, MemoryData, Operation
from upak.store.keyspace import to_bytes

# A create replayed after an outage is refused when it predates a "log out everywhere else"
# by more than this: the workers' clocks may disagree by a little, a fresh login never.
FLOOR_SKEW_MS = 2_000


class NewSession(NamedTuple):
    """CREATE's record (its field order is ARGV's)."""

    handle: str
    created_ms: int
    abs_end_ms: int
    idle_ms: int
    now_ms: int
    ip: str
    user_agent: str
    cap: int  # sessions per user; past it the oldest end


def _ms_later(args: NewSession, elapsed_ms: int) -> NewSession:
    # Written back later, the create is judged at the time it lands (its TTLs shrink).
    return args._replace(now_ms=args.now_ms + elapsed_ms)


# CREATE  KEYS: session, index, floor, tombstone, the user's session keys' prefix (a family)
#         ARGV: NewSession
_CREATE_LUA = f"""
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local created = tonumber(ARGV[2])
local abs = tonumber(ARGV[3])
local now = tonumber(ARGV[5])
local floor = redis.call('HMGET', KEYS[3], 't', 'k')
if floor[1] and created < tonumber(floor[1]) - {FLOOR_SKEW_MS} and floor[2] ~= ARGV[1] then
  return 0
end
local ends = math.min(created + tonumber(ARGV[4]), abs)
if ends <= now then return 0 end
redis.call('HSET', KEYS[1], 'c', ARGV[2], 's', ARGV[2], 'a', ARGV[3], 'i', ARGV[6], 'ua', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ends - now)
redis.call('ZADD', KEYS[2], created, ARGV[1])
if redis.call('PTTL', KEYS[2]) < abs - now then redis.call('PEXPIRE', KEYS[2], abs - now) end
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[8])
if extra > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, extra - 1)
  for _, h in ipairs(oldest) do redis.call('DEL', KEYS[5] .. h) end
  redis.call('ZREM', KEYS[2], unpack(oldest))
end
return 1
"""


def _create_memory(data: MemoryData, keys: Sequence[str], args: NewSession) -> int:
    session_key, index_key, floor_key, tomb_key, sessions = keys
    if data.exists(tomb_key):
        return 0
    handle, created, abs_end = args.handle, args.created_ms, args.abs_end_ms
    idle, now = args.idle_ms, args.now_ms
    floor = data.hgetall(floor_key)
    if floor and created < int(floor[b"t"]) - FLOOR_SKEW_MS and floor.get(b"k") != handle.encode():
        return 0
    ends = min(created + idle, abs_end)
    if ends <= now:
        return 0
    data.hset(
        session_key, {"c": created, "s": created, "a": abs_end, "i": args.ip, "ua": args.user_agent}
    )
    data.pexpire(session_key, ends - now)
    data.zadd(index_key, {handle: created})
    if data.pttl(index_key) < abs_end - now:
        data.pexpire(index_key, abs_end - now)
    extra = data.zcard(index_key) - args.cap
    if extra > 0:
        oldest = [member for member, _ in data.zrange_withscores(index_key)[:extra]]
        for member in oldest:
            data.delete(sessions + member.decode())
        data.zrem(index_key, *oldest)
    return 1


def _remember_created(data: MemoryData, keys: Sequence[str], args: NewSession, reply: Any) -> None:
    if reply == 1:
        values: tuple[Arg, ...] = (
            args.created_ms,
            args.created_ms,
            args.abs_end_ms,
            args.ip,
            args.user_agent,
        )
        fields = {name: to_bytes(value) for name, value in zip(_FIELDS, values, strict=True)}
        _mirror(data, keys, args.handle, fields, args.idle_ms, args.now_ms)
    else:
        # Redis refused a create written back after an outage (its logout or a "log out
        # everywhere else" came first): the copy memory kept from the outage goes too.
        _forget(data, keys[0], keys[1], args.handle)


CREATE: Operation[NewSession, bool] = Operation(
    name="sessions.create",
    lua=_CREATE_LUA,
    args=NewSession,
    families=(4,),
    memory=_create_memory,
    parse=bool,
    writeback=True,
    durable=True,
    replay_args=_ms_later,
    remember=_remember_created,
)

"""CREATE: a new session, its index entry and the per-user cap, refused on replay after
its own logout (the tombstone) or a "log out everywhere else" (the floor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from upak.features.sessions.mirror import _forget, _mirror
from upak.features.sessions.stored import _BASE_OF_INDEX, _FIELDS, _base_of, _ms_later
from upak.store import Arg, MemoryData, Operation
from upak.store.memory import to_bytes
from upak.store.operation import POSITIONAL

# A create replayed after an outage is refused when it predates a "log out everywhere else"
# by more than this: the workers' clocks may disagree by a little, a fresh login never.
FLOOR_SKEW_MS = 2_000


# CREATE  KEYS: session, index, floor, tombstone
#         ARGV: handle, created, absolute end, idle, now, ip, ua, cap
_CREATE_LUA = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local created = tonumber(ARGV[2])
local abs = tonumber(ARGV[3])
local now = tonumber(ARGV[5])
local floor = redis.call('HMGET', KEYS[3], 't', 'k')
if floor[1] and created < tonumber(floor[1]) - SKEW and floor[2] ~= ARGV[1] then return 0 end
local ends = math.min(created + tonumber(ARGV[4]), abs)
if ends <= now then return 0 end
redis.call('HSET', KEYS[1], 'c', ARGV[2], 's', ARGV[2], 'a', ARGV[3], 'i', ARGV[6], 'ua', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ends - now)
redis.call('ZADD', KEYS[2], created, ARGV[1])
if redis.call('PTTL', KEYS[2]) < abs - now then redis.call('PEXPIRE', KEYS[2], abs - now) end
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[8])
if extra > 0 then
  BASE
  local oldest = redis.call('ZRANGE', KEYS[2], 0, extra - 1)
  for _, h in ipairs(oldest) do redis.call('DEL', base .. 's:' .. h) end
  redis.call('ZREM', KEYS[2], unpack(oldest))
end
return 1
""".replace("BASE", _BASE_OF_INDEX.format(i=2)).replace("SKEW", str(FLOOR_SKEW_MS))


def _create_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    session_key, index_key, floor_key, tomb_key = keys
    if data.exists(tomb_key):
        return 0
    handle, created, abs_end, idle, now = (
        str(args[0]),
        int(args[1]),
        int(args[2]),
        int(args[3]),
        int(args[4]),
    )
    floor = data.hgetall(floor_key)
    if floor and created < int(floor[b"t"]) - FLOOR_SKEW_MS and floor.get(b"k") != handle.encode():
        return 0
    ends = min(created + idle, abs_end)
    if ends <= now:
        return 0
    data.hset(session_key, {"c": created, "s": created, "a": abs_end, "i": args[5], "ua": args[6]})
    data.pexpire(session_key, ends - now)
    data.zadd(index_key, {handle: created})
    if data.pttl(index_key) < abs_end - now:
        data.pexpire(index_key, abs_end - now)
    extra = data.zcard(index_key) - int(args[7])
    if extra > 0:
        oldest = [member for member, _ in data.zrange_withscores(index_key)[:extra]]
        for member in oldest:
            data.delete(_base_of(index_key) + "s:" + member.decode())
        data.zrem(index_key, *oldest)
    return 1


def _remember_created(
    data: MemoryData, keys: Sequence[str], args: Sequence[Arg], reply: Any
) -> None:
    if reply == 1:
        values = (args[1], args[1], args[2], args[5], args[6])
        fields = {name: to_bytes(value) for name, value in zip(_FIELDS, values, strict=True)}
        _mirror(data, keys, str(args[0]), fields, int(args[3]), int(args[4]))
    else:
        # Redis refused a create written back after an outage (its logout or a "log out
        # everywhere else" came first): the copy memory kept from the outage goes too.
        _forget(data, keys[0], keys[1], str(args[0]))


CREATE: Operation[Sequence[Any], bool] = Operation(
    **POSITIONAL,
    name="sessions.create",
    lua=_CREATE_LUA,
    memory=_create_memory,
    parse=bool,
    writeback=True,
    durable=True,
    replay_args=_ms_later(4),
    remember=_remember_created,
)

"""Server-side sessions in the store: one login = one record, shared by every worker.

The cookie is `<user id>.<token>`, the token 256 bits from `secrets`. The store never holds
the token: a session's key ends in its *handle*, the first 128 bits of SHA-256(token), so a
dump of Redis does not hand out live sessions, and the handle doubles as the public id that
`GET /auth/sessions` shows and `DELETE /auth/sessions/{id}` takes. The user id in the cookie
is only routing: it names the hash tag every key of that user shares (one Cluster slot, so
"revoke all my other sessions" is one atomic script); a forged id points at keys where the
token's handle does not exist.

Keys of user 42 (`KeySpace.tagged`, tag `u42`):
    sessions:{u42}:s:<handle>  hash  c=created ms, s=last seen ms, a=absolute end ms, i=ip, ua
    sessions:{u42}:index       zset  handle -> created ms (listing, revoke-all, per-user cap)
    sessions:{u42}:floor       hash  t=ms, k=handle: sessions created before t, except k,
                                     were revoked ("log out everywhere else")
    sessions:{u42}:t:<handle>  str   tombstone of a revoked session, for its remaining life

Time is the app's clock, passed to every script (`now`), so expiry is decided the same way on
Redis and on memory and tests move time instead of sleeping; Redis TTLs only collect garbage.

Outage (the seed's fallback: sessions from process memory). Creating, touching and revoking
are journaled (`writeback`) and replayed on Redis at recovery, with TTLs recomputed for the
time that passed, so a login made during the outage works on every worker afterwards and a
logout made during it stays a logout. Nothing is brought back, in whatever order workers
(or services sharing the Redis) write back: touches only ever change a session that still
exists, a create replayed after a "log out everywhere else" is refused by the floor, and one
replayed after its own logout by the session's tombstone (written by every revoke, on Redis
and on memory, for as long as the session could have lived). A session read from Redis is
mirrored into this process's memory (bounded: see MIRROR_TTL_MS / MIRROR_MAX_SESSIONS) so a
user active just before an outage stays logged in on the worker that served them. The mirror
outlives a recovery (two outages in a row log nobody out); after each recovery every mirrored
session Redis no longer has is dropped (`SessionManager.confirm_mirror`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from upak.store import Arg, KeySpace, MemoryData, Operation, Store
from upak.store.memory import KeyRegistry, to_bytes

FEATURE = "sessions"
MAX_SESSIONS_PER_USER = 100  # past it a new login ends the user's oldest session
MAX_USER_AGENT = 256
# A session read from Redis stays in this process's memory for this long after its last use
# (or until it ends), so an outage within that window does not log its user out here...
MIRROR_TTL_MS = 15 * 60 * 1000
# ...and at most this many sessions are mirrored per process (least recently used go first).
# Each costs about 1.2 KB of process memory (tracemalloc): 10 000 are ~12 MB per process.
MIRROR_MAX_SESSIONS = 10_000

# A create replayed after an outage is refused when it predates a "log out everywhere else"
# by more than this: the workers' clocks may disagree by a little, a fresh login never.
FLOOR_SKEW_MS = 2_000

TOKEN_BYTES = 32  # 256 bits
HANDLE_HEX = 32  # 128 bits of SHA-256(token)
MAX_COOKIE_VALUE = 64
_COOKIE = re.compile(r"([1-9][0-9]{0,17})\.([A-Za-z0-9_-]{43})")
_HANDLE = re.compile(r"[0-9a-f]{32}")


# --- what the feature hands out ---


@dataclass(frozen=True)
class LoginSession:
    """A live session. Holds no secret: the token never leaves `SessionManager`."""

    user_id: int
    handle: str
    created_at: float
    last_seen_at: float
    expires_at: float  # the absolute end (SESSION_MAX_AGE after login)
    ip: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class IssuedSession:
    """A new session and the cookie value that carries it (shown once, never logged)."""

    session: LoginSession
    cookie_value: str = field(repr=False)


@dataclass(frozen=True)
class SessionCookie:
    user_id: int
    token: str = field(repr=False)

    @property
    def handle(self) -> str:
        return handle_of(self.token)


def handle_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:HANDLE_HEX]


def parse_cookie(value: str) -> SessionCookie | None:
    """The cookie's parts, or None when it is not a value this service could have issued."""
    if len(value) > MAX_COOKIE_VALUE:
        return None
    match = _COOKIE.fullmatch(value)
    if match is None:
        return None
    return SessionCookie(int(match.group(1)), match.group(2))


def is_handle(text: str) -> bool:
    return _HANDLE.fullmatch(text) is not None


# --- the twins: Lua beside its memory half ---
# Lua numbers are doubles: millisecond timestamps (13 digits) are exact and print whole.

_FIELDS = (b"c", b"s", b"a", b"i", b"ua")  # created, last seen, absolute end, ip, user agent
_BASE_OF_INDEX = "local base = string.sub(KEYS[{i}], 1, -6)"  # "…:{u42}:index" -> "…:{u42}:"


def _live(values: Sequence[bytes | None], now_ms: int, idle_ms: int) -> bool:
    """Whether stored [c, s, a, …] describe a session neither idle nor past its end."""
    created, seen, abs_end = values[0], values[1], values[2]
    if created is None or seen is None or abs_end is None:
        return False
    return int(abs_end) > now_ms and int(seen) + idle_ms > now_ms


def _base_of(index_key: str) -> str:
    return index_key[: -len("index")]


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
        data.pexpire(index_key, ends - now_ms)
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


def _ms_later(position: int) -> Callable[[Sequence[Arg], int], Sequence[Arg] | None]:
    """replay_args: the call's `now` moved on by the time its write-back waited."""

    def shift(args: Sequence[Arg], elapsed_ms: int) -> Sequence[Arg]:
        shifted = list(args)
        shifted[position] = int(shifted[position]) + elapsed_ms
        return shifted

    return shift


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


CREATE: Operation[bool] = Operation(
    name="sessions.create",
    lua=_CREATE_LUA,
    memory=_create_memory,
    parse=bool,
    writeback=True,
    durable=True,
    replay_args=_ms_later(4),
    remember=_remember_created,
)


# RESOLVE  KEYS: session, index  ARGV: handle, now, idle  ->  [c, s, a, i, ua] or nil
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


def _resolve_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> list | None:
    session_key, index_key = keys
    stored = data.hgetall(session_key)
    values = [stored.get(name) for name in _FIELDS]
    if values[0] is None:
        return None
    if not _live(values, int(args[1]), int(args[2])):
        data.delete(session_key)
        data.zrem(index_key, str(args[0]))
        return None
    return values


def _remember_resolved(
    data: MemoryData, keys: Sequence[str], args: Sequence[Arg], reply: Any
) -> None:
    if reply is None:
        # Redis says it is gone (revoked elsewhere, expired): no local copy may outlive that.
        _forget(data, keys[0], keys[1], str(args[0]))
        return
    fields = {name: value or b"" for name, value in zip(_FIELDS, reply, strict=True)}
    _mirror(data, keys, str(args[0]), fields, int(args[2]), int(args[1]))


RESOLVE: Operation[list | None] = Operation(
    name="sessions.resolve",
    lua=_RESOLVE_LUA,
    memory=_resolve_memory,
    remember=_remember_resolved,
    # A session this process has no copy of may be in a Redis that refuses only writes.
    read_through=lambda reply: reply is None,
)


# TOUCH  KEYS: session  ARGV: seen, idle, now  ->  1 when renewed. Never creates: a session
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


def _touch_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    seen_now, abs_end = data.hget(keys[0], "s"), data.hget(keys[0], "a")
    if seen_now is None or abs_end is None:
        return 0
    seen = max(int(seen_now), int(args[0]))
    ends = min(seen + int(args[1]), int(abs_end))
    now = int(args[2])
    if ends <= now:
        return 0
    data.hset(keys[0], {"s": seen})
    data.pexpire(keys[0], ends - now)
    return 1


TOUCH: Operation[bool] = Operation(
    name="sessions.touch",
    lua=_TOUCH_LUA,
    memory=_touch_memory,
    parse=bool,
    writeback=True,
    expendable=True,  # a lost touch only brings an idle timeout nearer
    replay_args=_ms_later(2),
)


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


def _revoke_replayed(args: Sequence[Arg], elapsed_ms: int) -> Sequence[Arg] | None:
    handle, now, max_age = args
    left = int(max_age) - elapsed_ms
    return (handle, int(now) + elapsed_ms, left) if left > 0 else None


REVOKE: Operation[bool] = Operation(
    name="sessions.revoke",
    lua=_REVOKE_LUA,
    memory=_revoke_memory,
    parse=bool,
    writeback=True,
    precious=True,  # a dropped revocation is a logged-out session back on Redis
    durable=True,
    replay_args=_revoke_replayed,
    # Revoked on Redis: this process's mirrored copy must go too.
    remember=lambda data, keys, args, reply: _revoke_memory(data, keys, args),
)


# CONFIRM  KEYS: session, index  ARGV: handle  ->  1 while Redis still has the session. Run
# for every mirrored session after a recovery: one revoked on another worker during the
# outage must not be served from this mirror in the next one. Renews nothing.
def _confirm_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    return data.exists(keys[0])


def _remember_confirmed(
    data: MemoryData, keys: Sequence[str], args: Sequence[Arg], reply: Any
) -> None:
    if reply == 0:
        _forget(data, keys[0], keys[1], str(args[0]))


CONFIRM: Operation[bool] = Operation(
    name="sessions.confirm",
    lua="return redis.call('EXISTS', KEYS[1])",
    memory=_confirm_memory,
    parse=bool,
    remember=_remember_confirmed,
)
CONFIRM_BATCH = 256


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


def _floor_ttl_left(args: Sequence[Arg], elapsed_ms: int) -> Sequence[Arg]:
    keep, now, ttl = args
    return (keep, now, max(int(ttl) - elapsed_ms, 1))


REVOKE_OTHERS: Operation[int] = Operation(
    name="sessions.revoke_others",
    lua=_REVOKE_OTHERS_LUA,
    memory=_revoke_others_memory,
    parse=int,
    writeback=True,
    precious=True,
    durable=True,
    replay_args=_floor_ttl_left,
    remember=lambda data, keys, args, reply: _revoke_others_memory(data, keys, args),
)


# LIST  KEYS: index  ARGV: now, idle  ->  [[handle, c, s, a, i, ua], …], dropping ended ones
_LIST_LUA = """
BASE
local now = tonumber(ARGV[1])
local idle = tonumber(ARGV[2])
local out = {}
for _, h in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = base .. 's:' .. h
  local v = redis.call('HMGET', key, 'c', 's', 'a', 'i', 'ua')
  if v[1] and v[2] and v[3] and tonumber(v[3]) > now and tonumber(v[2]) + idle > now then
    table.insert(out, {h, v[1], v[2], v[3], v[4], v[5]})
  else
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], h)
  end
end
return out
""".replace("BASE", _BASE_OF_INDEX.format(i=1))


def _list_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> list[list]:
    index_key = keys[0]
    now, idle = int(args[0]), int(args[1])
    out = []
    for member, _ in data.zrange_withscores(index_key):
        session_key = _base_of(index_key) + "s:" + member.decode()
        stored = data.hgetall(session_key)
        values = [stored.get(name) for name in _FIELDS]
        if _live(values, now, idle):
            out.append([member, *values])
        else:
            _forget(data, session_key, index_key, member.decode())
    return out


LIST: Operation[list] = Operation(name="sessions.list", lua=_LIST_LUA, memory=_list_memory)


# --- the policy ---


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


class SessionManager:
    """Creates, resolves, lists and revokes sessions; all state lives in the store."""

    def __init__(
        self,
        store: Store,
        keys: KeySpace,
        *,
        idle_timeout: int,
        max_age: int,
        clock: Callable[[], float] = time.time,
        max_per_user: int = MAX_SESSIONS_PER_USER,
    ) -> None:
        self.store = store
        self.keys = keys
        self.idle_ms = idle_timeout * 1000
        self.max_age_ms = max_age * 1000
        self.clock = clock
        self.max_per_user = max_per_user
        # Renewing on every request would be a write per request; renewing at most this
        # often keeps the idle timeout exact to within it.
        self.touch_every_ms = min(60_000, self.idle_ms // 10)
        store.on_recovery(self.confirm_mirror)

    def __repr__(self) -> str:
        return f"SessionManager(idle={self.idle_ms // 1000}s, max_age={self.max_age_ms // 1000}s)"

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _tag(self, user_id: int) -> str:
        return f"u{user_id}"

    def _session_key(self, user_id: int, handle: str) -> str:
        return self.keys.tagged(FEATURE, self._tag(user_id), "s", handle)

    def _index_key(self, user_id: int) -> str:
        return self.keys.tagged(FEATURE, self._tag(user_id), "index")

    def _floor_key(self, user_id: int) -> str:
        return self.keys.tagged(FEATURE, self._tag(user_id), "floor")

    def _tomb_key(self, user_id: int, handle: str) -> str:
        return self.keys.tagged(FEATURE, self._tag(user_id), "t", handle)

    async def confirm_mirror(self, memory: MemoryData) -> None:
        """After an outage: drop every mirrored session Redis no longer has (revoked on
        another worker or service meanwhile), so the next outage cannot serve it here."""
        registry = memory.entry(self.keys.key(FEATURE, "mirror"), _MirrorRegistry)
        if not registry:
            return
        mirrored = list(registry.items())
        for start in range(0, len(mirrored), CONFIRM_BATCH):
            await asyncio.gather(
                *(
                    self.store.run(
                        CONFIRM, [session_key, index_key], [session_key.rsplit(":", 1)[1]]
                    )
                    for session_key, index_key in mirrored[start : start + CONFIRM_BATCH]
                )
            )

    async def create(self, user_id: int, ip: str = "", user_agent: str = "") -> IssuedSession:
        """A new session with a fresh token (never one the client offered)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        handle = handle_of(token)
        now = self._now_ms()
        abs_end = now + self.max_age_ms
        user_agent = user_agent[:MAX_USER_AGENT]
        keys = [
            self._session_key(user_id, handle),
            self._index_key(user_id),
            self._floor_key(user_id),
            self._tomb_key(user_id, handle),
        ]
        created = await self.store.run(
            CREATE,
            keys,
            [handle, now, abs_end, self.idle_ms, now, ip, user_agent, self.max_per_user],
        )
        if not created:  # only a replay can be refused; a fresh login never is
            raise RuntimeError("the store refused a fresh session")
        session = LoginSession(
            user_id, handle, now / 1000, now / 1000, abs_end / 1000, ip, user_agent
        )
        return IssuedSession(session, f"{user_id}.{token}")

    async def resolve(self, cookie: SessionCookie) -> LoginSession | None:
        """The live session this cookie names, renewed by this use; None if there is none."""
        handle = cookie.handle
        session_key = self._session_key(cookie.user_id, handle)
        now = self._now_ms()
        reply = await self.store.run(
            RESOLVE, [session_key, self._index_key(cookie.user_id)], [handle, now, self.idle_ms]
        )
        if reply is None:
            return None
        created, seen, abs_end = (int(v) for v in reply[:3])
        if now - seen >= self.touch_every_ms:
            if not await self.store.run(TOUCH, [session_key], [now, self.idle_ms, now]):
                return None  # revoked between the two calls: this request does not use it
            seen = now
        return LoginSession(
            cookie.user_id,
            handle,
            created / 1000,
            seen / 1000,
            abs_end / 1000,
            _text(reply[3]),
            _text(reply[4]),
        )

    async def list(self, user_id: int) -> list[LoginSession]:
        """The user's live sessions, most recently used first."""
        now = self._now_ms()
        rows = await self.store.run(LIST, [self._index_key(user_id)], [now, self.idle_ms])
        sessions = [
            LoginSession(
                user_id,
                _text(handle),
                int(c) / 1000,
                int(s) / 1000,
                int(a) / 1000,
                _text(ip),
                _text(ua),
            )
            for handle, c, s, a, ip, ua in rows
        ]
        return sorted(sessions, key=lambda s: (s.last_seen_at, s.created_at), reverse=True)

    async def revoke(self, user_id: int, handle: str) -> bool:
        """End one of this user's sessions. False when the user has no session `handle`."""
        if not is_handle(handle):
            return False
        keys = [
            self._session_key(user_id, handle),
            self._index_key(user_id),
            self._tomb_key(user_id, handle),
        ]
        return await self.store.run(REVOKE, keys, [handle, self._now_ms(), self.max_age_ms])

    async def revoke_others(self, user_id: int, keep_handle: str) -> int:
        """End every session of the user except `keep_handle`; returns how many ended."""
        return await self.store.run(
            REVOKE_OTHERS,
            [self._index_key(user_id), self._floor_key(user_id)],
            [keep_handle, self._now_ms(), self.max_age_ms],
        )

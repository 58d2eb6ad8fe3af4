"""Rate limiting: exact across processes, one script call per decision, memory when Redis is away.

A decision applies every limit of a request at once, in one Lua script on the Redis server's
clock (`TIME`; scripts are effects-replicated since Redis 5, so that is safe on replicas):
either every limit admits the request and each records it, or none records anything and the
reply says when to retry. Two algorithms, chosen per limit:

* sliding log (`window`, the default): a sorted set of admission times per key. Exact: at most
  N admissions in ANY interval of the window's length, whatever the processes and timing.
  Memory grows with N (one entry per admission still inside the window).
* GCRA (`:gcra`): one timestamp per key (the theoretical arrival time). A burst of N, then one
  every window/N. O(1) memory, smooth; the right choice for big N where a hard count per
  interval matters less than memory.

A key known to be over its limit is answered from process memory until its retry time with no
Redis call: nothing can free a slot before then, because refused requests record nothing.

While Redis is away the FailoverStore serves the memory twin, with every amount divided by
RATE_LIMIT_FALLBACK_DIVISOR (`fallback_args`), so N workers together stay close to the limit.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from upak.features.ratelimit_policy import Limit, parse_policy
from upak.store import KeySpace, Operation, Store
from upak.store.operation import Arg

if TYPE_CHECKING:
    from upak.store.memory import MemoryData

FEATURE = "ratelimit"
_ALGORITHM_CODE = {"window": "w", "gcra": "g"}

# ---------------------------------------------------------------------------------------------
# The operation: Lua and its memory twin, side by side.
#
# KEYS: one per limit. ARGV: per limit, three values: algorithm (w|g), amount, window in ms.
# Reply: {allowed, then per limit: remaining, next_ms, retry_ms}
#   remaining  how many more this key may do now (after this request, if admitted)
#   next_ms    ms until `remaining` grows by one (the RateLimit header's t)
#   retry_ms   ms until this limit would admit again; 0 when it admits now
# ---------------------------------------------------------------------------------------------

CHECK_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local reply = {1}
local admit = {}
for i = 1, n do
  local key = KEYS[i]
  local limit = tonumber(ARGV[i * 3 - 1])
  local window = tonumber(ARGV[i * 3]) * 1000
  local remaining, nxt, retry
  if ARGV[i * 3 - 2] == 'w' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    if count < limit then
      remaining = limit - count - 1
      local oldest = now
      if count > 0 then oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) end
      nxt, retry = oldest + window - now, 0
      admit[i] = now
    else
      local edge = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
      remaining, retry = 0, tonumber(edge[2]) + window - now
      nxt = retry
      reply[1] = 0
    end
  else
    local interval = window / limit
    local tat = tonumber(redis.call('GET', key) or '0') or 0
    if tat < now then tat = now end
    local new_tat = tat + interval
    local allow_at = new_tat - window
    if allow_at > now then
      remaining, retry = 0, allow_at - now
      nxt = retry
      reply[1] = 0
    else
      local slack = now - allow_at
      remaining = math.floor(slack / interval)
      nxt, retry = (remaining + 1) * interval - slack, 0
      admit[i] = new_tat
    end
  end
  reply[i * 3 - 1] = remaining
  reply[i * 3] = math.ceil(nxt / 1000)
  reply[i * 3 + 1] = math.ceil(retry / 1000)
end
if reply[1] == 1 then
  for i = 1, n do
    local key = KEYS[i]
    local window_ms = tonumber(ARGV[i * 3])
    if ARGV[i * 3 - 2] == 'w' then
      local member = string.format('%d', now)
      local suffix = 0
      while redis.call('ZADD', key, 'NX', now, member) == 0 do
        suffix = suffix + 1
        member = string.format('%d-%d', now, suffix)
      end
      redis.call('PEXPIRE', key, window_ms)
    else
      local ttl = math.ceil((admit[i] - now) / 1000)
      redis.call('SET', key, string.format('%d', math.ceil(admit[i])), 'PX', ttl)
    end
  end
end
return reply
"""


class _Log(deque):  # type: ignore[type-arg]
    """The memory twin's sliding log: admission times in µs, oldest first."""


def _check_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
    now_ms = data.now_ms()
    now = now_ms * 1000
    reply = [1]
    admit: list[float] = []
    for i, key in enumerate(keys):
        code, limit, window = args[i * 3], int(args[i * 3 + 1]), int(args[i * 3 + 2]) * 1000
        if code == "w":
            log = data.entry(key, _Log)
            while log and log[0] <= now - window:
                log.popleft()
            if log is not None and not log:
                data.delete(key)
            count = len(log) if log else 0
            if count < limit:
                remaining = limit - count - 1
                nxt, retry = (log[0] if log else now) + window - now, 0.0
                admit.append(now)
            else:
                assert log is not None
                remaining, retry = 0, log[count - limit] + window - now
                nxt = retry
                reply[0] = 0
                admit.append(0.0)
        else:
            interval = window / limit
            raw = data.get(key)
            tat = max(float(raw) if raw else 0.0, now)
            new_tat = tat + interval
            allow_at = new_tat - window
            if allow_at > now:
                remaining, retry = 0, allow_at - now
                nxt = retry
                reply[0] = 0
                admit.append(0.0)
            else:
                slack = now - allow_at
                remaining = math.floor(slack / interval)
                nxt, retry = (remaining + 1) * interval - slack, 0.0
                admit.append(new_tat)
        reply += [remaining, math.ceil(nxt / 1000), math.ceil(retry / 1000)]
    if reply[0] == 1:
        for i, key in enumerate(keys):
            window_ms = int(args[i * 3 + 2])
            if args[i * 3] == "w":
                log = data.entry(key, _Log)
                if log is None:
                    log = _Log()
                log.append(now)
                data.put(key, log, now_ms + window_ms)
            else:
                at = math.ceil(admit[i])
                data.set(key, str(at), px=math.ceil((at - now) / 1000))
    return reply


def _divide_amounts(divisor: int) -> Callable[[Sequence[Arg]], Sequence[Arg]]:
    def rewrite(args: Sequence[Arg]) -> Sequence[Arg]:
        out = list(args)
        for i in range(1, len(out), 3):
            out[i] = max(1, int(out[i]) // divisor)
        return out

    return rewrite


@cache
def check_operation(divisor: int = 1) -> Operation[list[int]]:
    """The decision operation; during an outage each amount is divided by `divisor`."""
    return Operation(
        name="ratelimit_check",
        lua=CHECK_LUA,
        memory=_check_memory,
        parse=list,
        fallback_args=_divide_amounts(divisor) if divisor > 1 else None,
    )


# ---------------------------------------------------------------------------------------------
# Policies bound to names, and decisions.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NamedLimit:
    """One limit of a named policy; `name` is what the RateLimit headers call it."""

    name: str
    limit: Limit
    key_suffix: str

    @property
    def policy_item(self) -> str:
        """This limit as a RateLimit-Policy list member: `"name";q=N;w=S`."""
        return f'"{self.name}";q={self.limit.amount};w={self.limit.window_seconds}'


def named_limits(policy_name: str, text: str) -> tuple[NamedLimit, ...]:
    """Parse `text` into limits named for the headers: `default`, or `default-1m` for several."""
    limits = parse_policy(text)
    out: list[NamedLimit] = []
    for limit in limits:
        name = policy_name
        if len(limits) > 1:
            name = f"{policy_name}-{str(limit).split('/', 1)[1].replace(':', '-')}"
            if any(other.name == name for other in out):
                name = f"{name}-{limit.amount}"
        code = _ALGORITHM_CODE[limit.algorithm]
        suffix = f"{policy_name}:{limit.amount}:{limit.window_ms}:{code}"
        out.append(NamedLimit(name, limit, suffix))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Check:
    """One limit applied to one identity: the unit a decision is made of."""

    limit: NamedLimit
    key: str


@dataclass(frozen=True, slots=True)
class LimitState:
    limit: NamedLimit
    remaining: int
    next_ms: int  # until `remaining` grows by one (the RateLimit header's t)
    retry_ms: int  # until this limit admits again; 0 when it admitted

    @property
    def header_item(self) -> str:
        """This state as a RateLimit list member: `"name";r=N;t=S`."""
        return f'"{self.limit.name}";r={self.remaining};t={-(-self.next_ms // 1000)}'


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    states: tuple[LimitState, ...]
    local: bool = False  # answered from the known-over-limit table, without Redis

    @property
    def retry_after(self) -> int:
        """Whole seconds (rounded up) until every refusing limit admits again; 0 if allowed."""
        return -(-max((s.retry_ms for s in self.states), default=0) // 1000)


def identity_token(kind: str, value: str) -> str:
    """A key-safe token for an identity: IPs as they are, anything else hashed.

    Hashing keeps emails out of Redis key names (they show in MONITOR and `upak redis info`)
    and keeps braces, which would break the Cluster hash tag, out of the key.
    """
    if kind == "ip":
        return f"ip:{value}"
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    return f"{kind}:{digest}"


class RateLimiter:
    """Makes decisions for a set of checks, one script call (one round trip) each."""

    def __init__(
        self,
        store: Store,
        keys: KeySpace,
        *,
        divisor: int = 1,
        clock: Callable[[], float] = time.monotonic,
        one_slot_per_call: bool = False,
        blocked_max: int = 10_000,
    ) -> None:
        self.store = store
        self.keys = keys
        self.op = check_operation(divisor)
        self._clock = clock
        # On Redis Cluster a script's keys must share a slot: checks are then split by
        # identity into one call each, sent together in one pipeline (still one round trip).
        self.one_slot_per_call = one_slot_per_call
        # key -> local time it admits again: until then answered without Redis.
        self._blocked: OrderedDict[str, float] = OrderedDict()
        self.blocked_max = blocked_max
        self.local_refusals = 0

    def check_for(self, limit: NamedLimit, identity: str) -> Check:
        """`identity` is an `identity_token`; keys of one identity share a hash tag."""
        return Check(limit, self.keys.tagged(FEATURE, identity, limit.key_suffix))

    async def decide(self, checks: Sequence[Check]) -> Decision:
        """Admit the request under every check, or refuse it and record nothing."""
        if not checks:
            return Decision(True, ())
        blocked = self._known_blocked(checks)
        if blocked is not None:
            return blocked
        if self.one_slot_per_call and len({_tag(c.key) for c in checks}) > 1:
            return await self._decide_per_slot(checks)
        reply = await self.store.run(self.op, [c.key for c in checks], _args(checks))
        decision = _decision(checks, reply)
        if not decision.allowed:
            self._remember_blocked(checks, decision)
        return decision

    async def _decide_per_slot(self, checks: Sequence[Check]) -> Decision:
        import asyncio

        groups: dict[str, list[Check]] = {}
        for check in checks:
            groups.setdefault(_tag(check.key), []).append(check)
        replies = await asyncio.gather(
            *(self.store.run(self.op, [c.key for c in g], _args(g)) for g in groups.values())
        )
        states: dict[str, LimitState] = {}
        allowed = True
        for group, reply in zip(groups.values(), replies, strict=True):
            part = _decision(group, reply)
            allowed = allowed and part.allowed
            states.update(zip((c.key for c in group), part.states, strict=True))
        decision = Decision(allowed, tuple(states[c.key] for c in checks))
        if not allowed:
            self._remember_blocked(checks, decision)
        return decision

    def _known_blocked(self, checks: Sequence[Check]) -> Decision | None:
        if not self._blocked:
            return None
        now = self._clock()
        hit = False
        states = []
        for check in checks:
            until = self._blocked.get(check.key)
            if until is not None and until > now:
                hit = True
                retry_ms = max(1, math.ceil((until - now) * 1000))
                states.append(LimitState(check.limit, 0, retry_ms, retry_ms))
            else:
                if until is not None:
                    del self._blocked[check.key]
                # Not asked: the full quota is the honest upper bound for the header.
                states.append(LimitState(check.limit, check.limit.limit.amount, 0, 0))
        if not hit:
            return None
        self.local_refusals += 1
        return Decision(False, tuple(states), local=True)

    def _remember_blocked(self, checks: Sequence[Check], decision: Decision) -> None:
        # Redis computed the retry time on its clock before the reply travelled here, so
        # the local deadline can only be late by the one-way latency, never early.
        now = self._clock()
        for check, state in zip(checks, decision.states, strict=True):
            if state.retry_ms > 0:
                self._blocked[check.key] = now + state.retry_ms / 1000
                self._blocked.move_to_end(check.key)
        while len(self._blocked) > self.blocked_max:
            self._blocked.popitem(last=False)


def _tag(key: str) -> str:
    start = key.index("{")
    return key[start : key.index("}", start)]


def _args(checks: Sequence[Check]) -> list[Arg]:
    args: list[Arg] = []
    for check in checks:
        limit = check.limit.limit
        args += (_ALGORITHM_CODE[limit.algorithm], limit.amount, limit.window_ms)
    return args


def _decision(checks: Sequence[Check], reply: Sequence[int]) -> Decision:
    states = tuple(
        LimitState(
            check.limit,
            int(reply[i * 3 + 1]),
            max(0, int(reply[i * 3 + 2])),
            max(0, int(reply[i * 3 + 3])),
        )
        for i, check in enumerate(checks)
    )
    return Decision(bool(reply[0]), states)

"""Rate limiting: exact across processes, one script call per decision, memory when Redis is away.

A decision applies every limit of a request at once, in one Lua script on the Redis server's
clock (`TIME`; scripts are effects-replicated since Redis 5, so that is safe on replicas):
either every limit admits the request and each records it, or none records anything and the
reply says when to retry. Two algorithms, chosen per limit:

* sliding log (`window`, the default): a list of admission times per key, newest first.
  Exact: at most N admissions in ANY interval of the window's length, whatever the processes
  and timing. Memory grows with N (one entry per admission still inside the window).
* GCRA (`:gcra`): one timestamp per key (the theoretical arrival time). A burst of N, then one
  every window/N. O(1) memory, smooth; the right choice for big N where a hard count per
  interval matters less than memory.

A key known to be over its limit is answered from process memory until its retry time with no
Redis call: nothing can free a slot before then, because refused requests record nothing.

While Redis is away the FailoverStore serves the memory twin, with every amount divided by
RATE_LIMIT_FALLBACK_DIVISOR (`fallback_args`): the number of hosts, since the workers of one
host count together in the host tier (store/host.py), so N hosts together stay at the limit.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, NamedTuple

from upak.ratelimit_policy import Limit, parse_policy
from upak.store import KeySpace, Operation, Store
from upak.store.batch import BatchCodec, Part
from upak.store.keyspace import IntLog
from upak.store.operation import Arg

if TYPE_CHECKING:
    from upak.store.keyspace import MemoryData

FEATURE = "ratelimit"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_ALGORITHM_CODE = {"window": "l", "gcra": "g"}

# ---------------------------------------------------------------------------------------------
# The operation: Lua and its memory twin, side by side.
#
# One call decides a batch of decisions, in order; each decision is atomic (all of its limits
# admit and record, or none records) and sees the ones before it in the batch.
# The record is `Decisions`; its ARGV (`encode_decisions`, read back by `decode_decisions`),
# per decision: n, then per limit three values: algorithm (l|g), amount, window in ms.
#   An upper-case algorithm (L|G) only asks: "would this key admit now?", and records nothing
#   even when the decision admits (failed-login limits are checked before the password and
#   recorded only when it proves wrong).
# KEYS: one per limit, in the same order.
# Reply, per decision: allowed, then per limit: remaining, next_ms, retry_ms
#   remaining  how many more this key may do now (after this request, if admitted)
#   next_ms    ms until `remaining` grows by one (the RateLimit header's t)
#   retry_ms   ms until this limit would admit again; 0 when it admits now
# The sliding log is a LIST of admission times in µs, newest first: O(1) at both ends, and
# a listpack of integers (about 10 bytes an entry; a sorted set costs several times that).
# ---------------------------------------------------------------------------------------------

DECIDE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_text = t[1] .. string.format('%06d', tonumber(t[2]))
local reply = {}
local a, k = 1, 1
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local verdict = #reply + 1
  reply[verdict] = 1
  local admit = {}
  for i = 0, n - 1 do
    local key = KEYS[k + i]
    local limit = tonumber(ARGV[a + 2 + i * 3])
    local window = tonumber(ARGV[a + 3 + i * 3]) * 1000
    local remaining, nxt, retry
    local algorithm = ARGV[a + 1 + i * 3]
    if algorithm == 'l' or algorithm == 'L' then
      local last = redis.call('LINDEX', key, -1)
      while last and tonumber(last) <= now - window do
        redis.call('RPOP', key)
        last = redis.call('LINDEX', key, -1)
      end
      local count = redis.call('LLEN', key)
      if count < limit then
        remaining, retry = limit - count, 0
        if algorithm == 'l' then remaining = remaining - 1 end
        nxt = (last and tonumber(last) or now) + window - now
      else
        retry = tonumber(redis.call('LINDEX', key, limit - 1)) + window - now
        remaining, nxt = 0, retry
        reply[verdict] = 0
      end
    else
      local interval = window / limit
      local tat = tonumber(redis.call('GET', key) or '0') or 0
      if tat < now then tat = now end
      local allow_at = tat + interval - window
      if allow_at > now then
        remaining, retry = 0, allow_at - now
        nxt = retry
        reply[verdict] = 0
      else
        local slack = now - allow_at
        remaining = math.floor(slack / interval)
        nxt, retry = (remaining + 1) * interval - slack, 0
        admit[i] = math.ceil(tat + interval)
      end
    end
    reply[#reply + 1] = remaining
    reply[#reply + 1] = math.ceil(nxt / 1000)
    reply[#reply + 1] = math.ceil(retry / 1000)
  end
  if reply[verdict] == 1 then
    for i = 0, n - 1 do
      local key = KEYS[k + i]
      local algorithm = ARGV[a + 1 + i * 3]
      if algorithm == 'l' then
        redis.call('LPUSH', key, now_text)
        redis.call('PEXPIRE', key, ARGV[a + 3 + i * 3])
      elseif algorithm == 'g' then
        local ttl = math.ceil((admit[i] - now) / 1000)
        redis.call('SET', key, string.format('%d', admit[i]), 'PX', ttl)
      end
    end
  end
  a = a + 1 + n * 3
  k = k + n
end
return reply
"""


class ScriptLimit(NamedTuple):
    """One limit as the script takes it: algorithm code (l, g; upper-case: only ask),
    amount, window in ms."""

    algorithm: str
    amount: int
    window_ms: int


class Decisions(NamedTuple):
    """The decision operation's record: decisions in order, each its limits, one per key
    (KEYS holds every decision's keys, in the same order)."""

    decisions: tuple[tuple[ScriptLimit, ...], ...]


def encode_decisions(record: Decisions) -> list[Arg]:
    """The script's ARGV: per decision n, then algorithm, amount, window_ms per limit."""
    argv: list[Arg] = []
    for limits in record.decisions:
        argv.append(len(limits))
        for limit in limits:
            argv += limit  # a ScriptLimit is its three values, in ARGV's order
    return argv


def decode_decisions(argv: Sequence[Arg]) -> Decisions:
    """The record `encode_decisions` made `argv` from."""
    decisions: list[tuple[ScriptLimit, ...]] = []
    a = 0
    while a < len(argv):
        n = int(argv[a])
        row = argv[a + 1 : a + 1 + n * 3]
        if len(row) != n * 3:
            raise ValueError("a rate-limit decision's ARGV ends inside a limit")
        decisions.append(
            tuple(
                ScriptLimit(str(row[i]), int(row[i + 1]), int(row[i + 2]))
                for i in range(0, n * 3, 3)
            )
        )
        a += 1 + n * 3
    return Decisions(tuple(decisions))


def merge_decisions(
    calls: Sequence[tuple[Sequence[str], Decisions]],
) -> tuple[list[str], Decisions]:
    """Several calls' decisions as one call: their keys and decisions, in order (the script
    takes them in order, each atomic on its own, and each sees the ones before it)."""
    keys: list[str] = []
    decisions: list[tuple[ScriptLimit, ...]] = []
    for call_keys, record in calls:
        keys += call_keys
        decisions += record.decisions
    return keys, Decisions(tuple(decisions))


def split_decisions(records: Sequence[Decisions], reply: list[int]) -> list[list[int]]:
    """A merged call's reply cut back into each call's own (the other half of the merge)."""
    out: list[list[int]] = []
    at = 0
    for record in records:
        decisions = record.decisions
        if len(decisions) == 1:  # as RateLimiter asks
            end = at + 1 + len(decisions[0]) * 3
        else:
            end = at + sum([1 + len(limits) * 3 for limits in decisions])
        out.append(reply[at:end])  # a list: `parse` made the reply one
        at = end
    if at != len(reply):
        raise ValueError("a merged rate-limit reply does not match its decisions")
    return out


def decision_parts(
    keys: Sequence[str], record: Decisions, group: Callable[[str], Hashable]
) -> list[Part[Decisions]] | None:
    """A call whose keys fall into several Cluster slots (a login's IP and email limits): one
    one-decision call per decision and slot, or None when every key shares one slot. Each
    part is atomic on its own; together they are not (a part that admits records even if
    another part refuses)."""
    groups = [group(key) for key in keys]
    if all(g == groups[0] for g in groups):
        return None
    parts: list[Part[Decisions]] = []
    k = 0
    for limits in record.decisions:
        mine: dict[Hashable, list[int]] = {}
        for i in range(k, k + len(limits)):
            mine.setdefault(groups[i], []).append(i)
        for indexes in mine.values():
            part = Decisions((tuple(limits[i - k] for i in indexes),))
            parts.append(Part(indexes, [keys[i] for i in indexes], part))
        k += len(limits)
    return parts


def join_decisions(
    record: Decisions, parts: Sequence[Part[Decisions]], replies: Sequence[Sequence[int]]
) -> list[int]:
    """The reply of the call `decision_parts` split: a decision admits if all its parts did."""
    owner: list[int] = []  # key position -> decision
    for d, limits in enumerate(record.decisions):
        owner += [d] * len(limits)
    allowed = [1] * len(record.decisions)
    values: list[Sequence[int]] = [()] * len(owner)
    for part, reply in zip(parts, replies, strict=True):
        for j, i in enumerate(part.indexes):
            values[i] = reply[1 + j * 3 : 4 + j * 3]
            if not reply[0]:
                allowed[owner[i]] = 0
    out: list[int] = []
    at = 0
    for d, limits in enumerate(record.decisions):
        out.append(allowed[d])
        for value in values[at : at + len(limits)]:
            out += value
        at += len(limits)
    return out


DECISIONS_BATCH: BatchCodec[Decisions] = BatchCodec(
    merge=merge_decisions, split=split_decisions, parts=decision_parts, join=join_decisions
)


_Log = IntLog  # the memory twin's sliding log: admission times in µs, newest first, as the script


def _decide_memory(data: MemoryData, keys: Sequence[str], args: Decisions) -> list[int]:
    now_ms = data.now_ms()
    now = now_ms * 1000
    reply: list[int] = []
    k = 0
    for limits in args.decisions:
        verdict = len(reply)
        reply.append(1)
        admit: dict[int, int] = {}
        for i, rule in enumerate(limits):
            key = keys[k + i]
            limit, window = rule.amount, rule.window_ms * 1000
            algorithm = rule.algorithm
            if algorithm in ("l", "L"):
                log = data.entry(key, _Log)
                while log and log[-1] <= now - window:  # the script's LINDEX -1 / RPOP
                    log.pop()
                if log is not None and not log:
                    data.delete(key)
                count = len(log) if log else 0
                if count < limit:
                    remaining, retry = limit - count - (algorithm == "l"), 0.0
                    nxt = (log[-1] if log else now) + window - now
                else:
                    assert log is not None
                    retry = log[limit - 1] + window - now  # the script's LINDEX limit - 1
                    remaining, nxt = 0, retry
                    reply[verdict] = 0
            else:
                interval = window / limit
                raw = data.get(key)
                tat = max(float(raw) if raw else 0.0, now)
                allow_at = tat + interval - window
                if allow_at > now:
                    remaining, retry = 0, allow_at - now
                    nxt = retry
                    reply[verdict] = 0
                else:
                    slack = now - allow_at
                    remaining = math.floor(slack / interval)
                    nxt, retry = (remaining + 1) * interval - slack, 0.0
                    admit[i] = math.ceil(tat + interval)
            reply += (remaining, math.ceil(nxt / 1000), math.ceil(retry / 1000))
        if reply[verdict] == 1:
            for i, rule in enumerate(limits):
                key, window_ms, algorithm = keys[k + i], rule.window_ms, rule.algorithm
                if algorithm == "l":
                    log = data.entry(key, _Log)
                    if log is None:
                        log = _Log()
                    log.appendleft(now)  # the script's LPUSH
                    data.put(key, log, now_ms + window_ms)
                elif algorithm == "g":
                    data.set(key, str(admit[i]), px=math.ceil((admit[i] - now) / 1000))
        k += len(limits)
    return reply


def _divide_amounts(divisor: int) -> Callable[[Decisions], Decisions]:
    """Each worker's share of every limit, for the memory twin during an outage."""

    def share(limit: ScriptLimit) -> ScriptLimit:
        return limit._replace(amount=max(1, limit.amount // divisor))

    def rewrite(args: Decisions) -> Decisions:
        return Decisions(tuple(tuple(map(share, limits)) for limits in args.decisions))

    return rewrite


@cache
def decide_operation(divisor: int = 1) -> Operation[Decisions, list[int]]:
    """The decision operation; during an outage each amount is divided by `divisor`."""
    return Operation(
        name="ratelimit_decide",
        lua=DECIDE_LUA,
        args=Decisions,
        encode=encode_decisions,
        decode=decode_decisions,
        batch=DECISIONS_BATCH,
        memory=_decide_memory,
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
    peek: bool = False  # ask only: admit or refuse, record nothing (see `peeking`)
    args: ScriptLimit = field(init=False)  # what the script gets for this limit
    # The record of a decision on this limit alone (most requests ask one limit).
    alone: Decisions = field(init=False, repr=False)
    # Rendered once: every response carries them (`"name";q=N;w=S`, `"name";r=%d;t=%d`).
    policy_member: bytes = field(init=False, repr=False)
    state_template: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        code = _ALGORITHM_CODE[self.limit.algorithm]
        if self.peek:
            code = code.upper()
        args = ScriptLimit(code, self.limit.amount, self.limit.window_ms)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "alone", Decisions(((args,),)))
        object.__setattr__(self, "policy_member", self.policy_item.encode())
        object.__setattr__(self, "state_template", f'"{self.name}";r=%d;t=%d'.encode())

    def peeking(self) -> NamedLimit:
        """The same limit on the same key, asked without recording anything."""
        return NamedLimit(self.name, self.limit, self.key_suffix, peek=True)

    @property
    def policy_item(self) -> str:
        """This limit as a RateLimit-Policy list member: `"name";q=N;w=S`."""
        return f'"{self.name}";q={self.limit.amount};w={self.limit.window_seconds}'


def named_limits(policy_name: str, policy: str | Sequence[Limit]) -> tuple[NamedLimit, ...]:
    """A policy's limits named for the headers: `default`, or `default-1m` for several.

    `policy` is its text (a route's own limit, parsed here: a typo raises ValueError) or its
    limits as Settings holds the RATE_LIMIT_* variables, parsed at start-up.
    """
    limits = parse_policy(policy) if isinstance(policy, str) else tuple(policy)
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


class Check(NamedTuple):
    """One limit applied to one identity: the unit a decision is made of."""

    limit: NamedLimit
    key: str


class LimitState(NamedTuple):
    limit: NamedLimit
    remaining: int
    next_ms: int  # until `remaining` grows by one (the RateLimit header's t)
    retry_ms: int  # until this limit admits again; 0 when it admitted

    @property
    def header_member(self) -> bytes:
        """This state as a RateLimit list member: `"name";r=N;t=S` (t in whole seconds, up)."""
        return self.limit.state_template % (self.remaining, -(-self.next_ms // 1000))


class Decision(NamedTuple):
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


def client_network(address: IPAddress | str | None, ipv6_prefix: int = 64) -> str:
    """The client identity a limit counts: an IPv4 address, or the IPv6 network of
    `ipv6_prefix` bits around the address.

    One IPv6 subscriber gets a whole /64 (RFC 6177 suggests /48 to /64 per site), so keying on
    the full address hands everyone 2^64 fresh quotas. IPv4-mapped IPv6 (`::ffff:1.2.3.4`,
    what a dual-stack socket reports) counts as the IPv4 address.
    """
    if address is None:
        return "unknown"
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address)
        except ValueError:
            return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


class RateLimiter:
    """Decides requests against their limits: one script call each, merged by the store.

    Each decision is one call of the decision operation; the store's batcher merges the
    decisions asked for in the same event-loop step into ONE script call (at most
    `BatchCodec.max_calls` each, `DECISIONS_BATCH`): the script takes them in order, each
    atomic on its own, so a busy process pays one EVALSHA, not one per request, and stays
    exact. On Redis Cluster the store sends each slot's part of a decision on its own.
    """

    def __init__(
        self,
        store: Store,
        keys: KeySpace,
        *,
        divisor: int = 1,
        clock: Callable[[], float] = time.monotonic,
        blocked_max: int = 10_000,
    ) -> None:
        self.store = store
        self.keys = keys
        self.op = decide_operation(divisor)
        self._clock = clock
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
        if self._blocked:
            blocked = self._known_blocked(checks)
            if blocked is not None:
                return blocked
        if len(checks) == 1:
            check = checks[0]
            reply = await self.store.submit(self.op, [check.key], check.limit.alone)
        else:
            reply = await self.store.submit(
                self.op,
                [check.key for check in checks],
                Decisions((tuple([check.limit.args for check in checks]),)),
            )
        decision = _decision(checks, reply)
        if not decision.allowed:
            self._remember_blocked(checks, decision)
        return decision

    def _known_blocked(self, checks: Sequence[Check]) -> Decision | None:
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
        if self.blocked_max <= 0:
            return
        now = self._clock()
        for check, state in zip(checks, decision.states, strict=True):
            if state.retry_ms > 0:
                self._blocked[check.key] = now + state.retry_ms / 1000
                self._blocked.move_to_end(check.key)
        while len(self._blocked) > self.blocked_max:
            self._blocked.popitem(last=False)


def _decision(checks: Sequence[Check], reply: Sequence[int]) -> Decision:
    """A one-decision reply: allowed, then remaining, next_ms, retry_ms per check."""
    states = tuple(
        [
            LimitState(
                check.limit,
                int(reply[1 + i * 3]),
                max(0, int(reply[2 + i * 3])),
                max(0, int(reply[3 + i * 3])),
            )
            for i, check in enumerate(checks)
        ]
    )
    return Decision(bool(reply[0]), states)

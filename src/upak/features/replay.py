"""Replay protection: each verified webhook delivery takes effect at most once.

A delivery is claimed only after its authenticity was checked (so forged requests cannot use
anything up), then moves through one key's life:

    (absent) --claim--> processing:<token> --finish--> done
                             |
                             +--release--> (absent)    the handler failed: the retry may run

* A duplicate that arrives while the first is processing hears IN_PROGRESS (the route answers
  409 with Retry-After, so the provider tries again); one that arrives after it is done hears
  DONE (200 "duplicate", no effect).
* `processing` is a lease: a worker that dies mid-handler does not block the delivery forever.
* `done` lives for the longer of two lifetimes: the replay window (twice the timestamp
  tolerance, so a captured signed delivery cannot come back while its timestamp is still
  accepted) and the idempotency horizon (WEBHOOK_IDEMPOTENCY_TTL, longer than any provider
  keeps retrying). The database's unique payment key is the last guard behind both.
* During a Redis outage the FailoverStore serves these operations from process memory and
  journals them (`writeback=True`), so claims made meanwhile are still claims after recovery.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from upak.store.keys import KeySpace
from upak.store.operation import Operation

if TYPE_CHECKING:
    from upak.config import Settings
    from upak.store.base import Store
    from upak.store.keyspace import MemoryData

T = TypeVar("T")

FEATURE = "replay"
DONE = b"d"
PROCESSING = b"p:"


class ClaimState(enum.IntEnum):
    """What `claim` found. The values are the operation's reply on both twins."""

    IN_PROGRESS = 0
    CLAIMED = 1
    DONE = 2


class Lease(NamedTuple):
    """CLAIM's record. ARGV: token, ttl_ms."""

    token: str  # whoever holds it may release the claim
    ttl_ms: int


class Done(NamedTuple):
    """FINISH's record. ARGV: ttl_ms."""

    ttl_ms: int


class Holder(NamedTuple):
    """RELEASE's record. ARGV: token."""

    token: str


R = TypeVar("R", Lease, Done)


def _remaining_ttl(args: R, elapsed_ms: int) -> R | None:
    # Written back after an outage, a lease or a done-marker keeps the time it had left.
    left = args.ttl_ms - elapsed_ms
    return args._replace(ttl_ms=left) if left > 0 else None


# --- claim: absent -> processing:<token>; reports what was there ---------------------------

_CLAIM_LUA = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], 'p:' .. ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == 'd' then return 2 end
return 0
"""


def _claim_memory(data: MemoryData, keys: Sequence[str], args: Lease) -> int:
    held = data.get(keys[0])
    if held is None:
        data.set(keys[0], PROCESSING + args.token.encode(), px=args.ttl_ms)
        return 1
    return 2 if held == DONE else 0


CLAIM: Operation[Lease, ClaimState] = Operation(
    name="replay_claim",
    lua=_CLAIM_LUA,
    args=Lease,
    memory=_claim_memory,
    parse=ClaimState,
    writeback=True,
    replay_args=_remaining_ttl,
)

# --- finish: -> done, for the replay window or the idempotency horizon ----------------------
# Unconditional: once the effect happened the delivery is done, whoever holds the lease now.

_FINISH_LUA = "redis.call('SET', KEYS[1], 'd', 'PX', ARGV[1]) return 1"


def _finish_memory(data: MemoryData, keys: Sequence[str], args: Done) -> int:
    data.set(keys[0], DONE, px=args.ttl_ms)
    return 1


FINISH: Operation[Done, bool] = Operation(
    name="replay_finish",
    lua=_FINISH_LUA,
    args=Done,
    memory=_finish_memory,
    parse=bool,
    writeback=True,
    durable=True,  # a done-marker lost in a failover lets a replay through
    replay_args=_remaining_ttl,
)

# --- release: processing:<token> -> absent, only for the holder of that token --------------
# A worker whose lease ran out must not free a claim another worker holds by now.

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == 'p:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _release_memory(data: MemoryData, keys: Sequence[str], args: Holder) -> int:
    if data.get(keys[0]) == PROCESSING + args.token.encode():
        return data.delete(keys[0])
    return 0


RELEASE: Operation[Holder, bool] = Operation(
    name="replay_release",
    lua=_RELEASE_LUA,
    args=Holder,
    memory=_release_memory,
    parse=bool,
    writeback=True,
)


# --- the policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayWindows:
    """The lifetimes the gate works with, in seconds."""

    tolerance: int  # how far a signed timestamp may be from now (REDIS_TTL)
    horizon: int  # how long a processed delivery is remembered (WEBHOOK_IDEMPOTENCY_TTL)
    lease: int = 60  # how long a claim may stay `processing` before a retry may take it

    @property
    def replay_window(self) -> int:
        # A timestamp up to `tolerance` ahead is accepted until `tolerance` after it.
        return 2 * self.tolerance

    @property
    def done_ttl(self) -> int:
        return max(self.replay_window, self.horizon)

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplayWindows:
        return cls(tolerance=settings.redis_ttl, horizon=settings.webhook_idempotency_ttl)


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    key: str
    token: str


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What `once` did: ran the handler (CLAIMED, with its result) or found a claim."""

    state: ClaimState
    result: T | None = None


class ReplayGuard:
    """At-most-once processing of deliveries, keyed by (scope, delivery id)."""

    def __init__(self, store: Store, keys: KeySpace, windows: ReplayWindows) -> None:
        self.store = store
        self.keys = keys
        self.windows = windows

    def key_for(self, scope: str, delivery_id: str) -> str:
        # Hashed: ids come from outside, so their length and characters are not ours to trust.
        digest = hashlib.sha256(delivery_id.encode("utf-8", "surrogatepass")).hexdigest()
        return self.keys.key(FEATURE, scope, digest[:40])

    async def claim(self, scope: str, delivery_id: str) -> Claim:
        key = self.key_for(scope, delivery_id)
        token = secrets.token_hex(8)
        state = await self.store.run(CLAIM, [key], Lease(token, self.windows.lease * 1000))
        return Claim(state, key, token)

    async def finish(self, claim: Claim) -> None:
        await self.store.run(FINISH, [claim.key], Done(self.windows.done_ttl * 1000))

    async def release(self, claim: Claim) -> None:
        await self.store.run(RELEASE, [claim.key], Holder(claim.token))

    async def once(
        self, scope: str, delivery_id: str, handler: Callable[[], Awaitable[T]]
    ) -> Outcome[T]:
        """Run `handler` if this delivery was never claimed; a handler that raises releases
        the claim (and the exception propagates) so the provider's retry can succeed."""
        claim = await self.claim(scope, delivery_id)
        if claim.state is not ClaimState.CLAIMED:
            return Outcome(claim.state)
        try:
            result = await handler()
        except BaseException:
            await self.release(claim)
            raise
        await self.finish(claim)
        return Outcome(ClaimState.CLAIMED, result)

"""Idempotency-Key (IETF draft-ietf-httpapi-idempotency-key-header) for POST requests.

A key's life, in the store (Redis, or process memory during an outage, journalled back):

    (absent) --begin--> {"fp": fingerprint}  --finish--> {"fp", "response"}   (24 h)
                      (a 2-minute lease)
                              |
                              +--abandon--> (absent)   the upstream call failed: retry may run

`begin` is one SET NX (claim_once): of concurrent requests with one key exactly one runs; the
others hear IN_PROGRESS (409) or, once it finished, REPLAY with the stored response. The same
key with another body is MISMATCH (422): the fingerprint is a hash of the request body.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from upak.store.base import Store
from upak.store.keys import KeySpace

FEATURE = "idempotency"
# YooKassa keeps its Idempotence-Key for 24 h; a finished record lives as long.
TTL_MS = 24 * 3600 * 1000
# An unfinished one is a lease: a worker that dies mid-checkout must not lock the key for a
# day. Longer than any checkout takes (the API's deadline is at most 30 s).
LEASE_MS = 120 * 1000


class KeyState(enum.Enum):
    NEW = "new"
    IN_PROGRESS = "in_progress"
    REPLAY = "replay"
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class Begun:
    state: KeyState
    response: Any = None


def fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class IdempotencyKeys:
    store: Store
    keys: KeySpace

    def _key(self, scope: str, key: str) -> str:
        # Hashed: a client's key may hold any characters and never becomes part of a key name.
        return self.keys.key(FEATURE, scope, hashlib.sha256(key.encode()).hexdigest())

    async def begin(self, scope: str, key: str, body: dict[str, Any]) -> Begun:
        name, fp = self._key(scope, key), fingerprint(body)
        if await self.store.claim_once(name, LEASE_MS, json.dumps({"fp": fp})):
            return Begun(KeyState.NEW)
        held = await self.store.get(name)
        if held is None:  # abandoned in between: this request may run after all
            if await self.store.claim_once(name, LEASE_MS, json.dumps({"fp": fp})):
                return Begun(KeyState.NEW)
            return Begun(KeyState.IN_PROGRESS)
        try:
            record = json.loads(held)
        except ValueError:
            return Begun(KeyState.IN_PROGRESS)
        if record.get("fp") != fp:
            return Begun(KeyState.MISMATCH)
        if "response" not in record:
            return Begun(KeyState.IN_PROGRESS)
        return Begun(KeyState.REPLAY, record["response"])

    async def finish(self, scope: str, key: str, body: dict[str, Any], response: Any) -> None:
        record = {"fp": fingerprint(body), "response": response}
        await self.store.set(self._key(scope, key), json.dumps(record), TTL_MS)

    async def abandon(self, scope: str, key: str) -> None:
        await self.store.delete(self._key(scope, key))

"""Bytes in Redis per record (MEMORY USAGE), ours next to the peer's key for the same job.

One private redis-server; each job writes many records and reports the average MEMORY USAGE of
the keys one record costs (for shared keys, such as a user's session index, their share).
"""

from __future__ import annotations

import asyncio
import json
import secrets

import redis.asyncio as aioredis

from common import Result, Row, redis_server
from upak.config import load_settings
from upak.features.cache import Cache
from upak.features.replay import ReplayGuard, ReplayWindows
from upak.features.sessions import SessionManager
from upak.store import KeySpace, build_store

RECORDS = 500
SETUP = (
    f"{RECORDS:,} records written one after another by 1 caller, each under a key of its own "
    "(distinct ids); MEMORY USAGE SAMPLES 0 of every key, averaged per record"
)


async def usage(client: aioredis.Redis, pattern: str) -> tuple[int, int]:
    """(total MEMORY USAGE of the keys matching `pattern`, how many keys)."""
    total = count = 0
    async for key in client.scan_iter(match=pattern, count=1000):
        total += await client.memory_usage(key, samples=0) or 0
        count += 1
    return total, count


async def main() -> None:
    result = Result("memory", "Memory: bytes in Redis per record (MEMORY USAGE)")
    with redis_server() as server:
        settings = load_settings(env_file=None, redis_url=server.url)
        store = build_store(settings)
        await store.start()
        keys = KeySpace(settings.redis_key_prefix)
        client = aioredis.Redis(port=server.port)

        # Replay protection: a processed delivery, remembered for the idempotency horizon.
        guard = ReplayGuard(store, keys, ReplayWindows.from_settings(settings))
        for _ in range(RECORDS):
            claim = await guard.claim("upak", f"msg_{secrets.token_hex(12)}")
            await guard.finish(claim)
        ours, _ = await usage(client, keys.pattern("replay"))
        for _ in range(RECORDS):  # the usual hand-rolled gate: SET id 1 NX EX
            await client.set(f"webhook:msg_{secrets.token_hex(12)}", 1, nx=True, ex=259_200)
        peer, _ = await usage(client, "webhook:*")
        result.add(
            Row(
                "replay: one processed delivery",
                ours / RECORDS,
                peer / RECORDS,
                "SET webhook:<id> 1 NX EX",
                unit="bytes",
                higher_is_better=False,
                setup=f"{SETUP}; peer: redis-py SET webhook:<id> 1 NX EX 259200 (3 days)",
            )
        )

        # Sessions: one login, with its share of the user's index.
        sessions = SessionManager(store, keys, idle_timeout=86_400, max_age=30 * 86_400)
        for user in range(RECORDS // 5):
            for _ in range(5):
                await sessions.create(user, "203.0.113.7", "Mozilla/5.0 (X11; Linux x86_64)")
        ours, _ = await usage(client, keys.pattern("sessions"))
        from starsessions.stores.redis import RedisStore as StarStore

        star = StarStore(connection=client)
        data = json.dumps(
            {"user_id": 1, "ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"}
        ).encode()
        for _ in range(RECORDS):
            await star.write(secrets.token_hex(32), data, lifetime=86_400, ttl=86_400)
        peer, _ = await usage(client, "starsessions.*")
        result.add(
            Row(
                "sessions: one session (incl. its share of the user's index)",
                ours / RECORDS,
                peer / RECORDS,
                "starsessions RedisStore, JSON",
                unit="bytes",
                higher_is_better=False,
                setup=f"{SETUP}; ours: {RECORDS // 5} users with 5 sessions each; peer: "
                "starsessions RedisStore on the same client, the same fields as JSON, "
                "lifetime and TTL 1 day",
            )
        )

        # Caching: one entry holding the same small JSON-able value.
        value = {"id": 42, "email": "user@example.com", "plan": "start", "expires": None}
        cache = Cache(store, keys, default_ttl=300)
        for i in range(RECORDS):
            await cache.set(f"me:{i}", value)
        ours, _ = await usage(client, keys.pattern("cache"))
        from cashews import Cache as Cashews

        cashews = Cashews()
        cashews.setup(server.url, client_side=False)
        for i in range(RECORDS):
            await cashews.set(f"peer:me:{i}", value, expire=300)
        peer, _ = await usage(client, "peer:me:*")
        result.add(
            Row(
                "cache: one entry (same value)",
                ours / RECORDS,
                peer / RECORDS,
                "cashews",
                unit="bytes",
                higher_is_better=False,
                setup=f"{SETUP}; peer: cashews 7 defaults (pickle serializer), "
                "client_side=False, expire 300 s",
            )
        )
        await cashews.close()
        await client.aclose()
        await store.close()
    result.notes.append(
        f"Averages over {RECORDS} records. Ours carry what the job needs beyond the peer's: a "
        "replay record holds its state (processing/done) for the handler protocol; a session "
        "keeps created/last-seen/IP/user agent and a per-user index for listing and revoking; "
        "a cache entry carries its soft TTL and tag versions. Rate-limit keys (each "
        "algorithm at 10, 100 and 1000 in the window, next to limits' moving window) are in "
        "the rate-limiting table."
    )
    result.write()


if __name__ == "__main__":
    asyncio.run(main())

"""Issue 19b's before/after: in-process calls per second through the store.

64 concurrent callers for 2 s (after 0.3 s of warm-up) on a private redis-server and on
process memory: rate-limit decisions (10,000 identities, a limit nobody reaches), session
resolves (500 sessions), claim-once (a fresh key each). Run the same script against two
trees, alternating, since the machine's other work moves every figure:

    .venv/bin/python bench/store_records.py
    PYTHONPATH=<other tree>/src .venv/bin/python bench/store_records.py
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure_rate, redis_server
from upak.config import load_settings
from upak.features.ratelimit import RateLimiter, named_limits
from upak.features.sessions import SessionManager, parse_cookie
from upak.store import KeySpace, MemoryStore, Store, build_store


async def rates_of(name: str, store: Store) -> dict[str, float]:
    keys = KeySpace("b:")
    limiter = RateLimiter(store, keys)
    limits = named_limits("default", "1000000/minute")
    checks = [
        [limiter.check_for(limit, f"ip:10.0.{i // 250}.{i % 250}") for limit in limits]
        for i in range(10_000)
    ]
    sessions = SessionManager(store, keys, idle_timeout=3600, max_age=86400)
    cookies = []
    for user in range(1, 501):
        cookie = parse_cookie((await sessions.create(user)).cookie_value)
        assert cookie is not None
        cookies.append(cookie)
    fresh = itertools.count()
    calls = {
        "ratelimit decide/s": lambda i: limiter.decide(checks[i % len(checks)]),
        "session resolve/s": lambda i: sessions.resolve(cookies[i % len(cookies)]),
        "claim_once/s": lambda i: store.claim_once(f"b:replay:{next(fresh)}", 60_000),
    }
    out = {}
    for label, call in calls.items():
        await measure_rate(call, seconds=0.3)
        out[f"{name} {label}"] = await measure_rate(call, seconds=2.0)
    return out


async def main(url: str) -> None:
    settings = load_settings(
        env_file=None, redis_url=url, redis_key_prefix="b:", database_url="sqlite+aiosqlite://"
    )
    for name, store in (("redis", build_store(settings)), ("memory", MemoryStore())):
        await store.start()
        try:
            for label, rate in (await rates_of(name, store)).items():
                print(f"{label:32s} {rate:10.0f}")
        finally:
            await store.close()


if __name__ == "__main__":
    with redis_server() as server:
        asyncio.run(main(server.url))

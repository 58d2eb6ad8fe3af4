"""The host tier: outage-mode throughput next to Redis-up in the same run, the Redis-up cost of
mirroring into it, and bytes per record in the shared file.

In-process and single-process for now (one FailoverStore; the 4-worker HTTP rounds the issue
asks for are not built yet): the figures are per-call costs of the store, not of the service.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from common import Result, Row, measure_rate, redis_server
from upak.config import load_settings
from upak.features.ratelimit import RateLimiter, named_limits
from upak.features.sessions import SessionManager, parse_cookie
from upak.store import KeySpace, Mode, build_store
from upak.store.host import HostStore

SECONDS = 1.5
SESSIONS = 500


async def main() -> None:
    result = Result("host_tier", "Host tier: outage throughput, Redis-up cost, bytes per record")
    result.notes.append("measured under contention: other helpers ran tests on the 2 cores")
    with redis_server() as server, tempfile.TemporaryDirectory() as tmp:
        fast = {"redis_socket_timeout": 0.2, "redis_connect_timeout": 0.2}
        tiered = load_settings(
            env_file=None, redis_url=server.url, upak_fallback_path=str(Path(tmp) / "t"), **fast
        )
        plain = load_settings(env_file=None, redis_url=server.url, **fast)
        host_store, memory_store = build_store(tiered), build_store(plain)
        assert isinstance(host_store.memory, HostStore)
        keys = KeySpace(tiered.redis_key_prefix)
        managers = [
            SessionManager(s, keys, idle_timeout=3600, max_age=86_400)
            for s in (host_store, memory_store)
        ]
        cookies = []
        for i in range(SESSIONS):
            issued = await managers[0].create(i + 1)
            cookies.append(parse_cookie(issued.cookie_value))

        def resolver(manager: SessionManager):
            return lambda i: manager.resolve(cookies[i % SESSIONS])

        up_tier = await measure_rate(resolver(managers[0]), seconds=SECONDS)
        up_memory = await measure_rate(resolver(managers[1]), seconds=SECONDS)
        result.add(
            Row(
                "Redis up: session resolve, mirror in the host tier",
                up_tier,
                up_memory,
                "mirror in process memory",
            )
        )
        limiters = [RateLimiter(s, keys) for s in (host_store, memory_store)]
        (limit,) = named_limits("t", "1000000/minute")

        def decider(limiter: RateLimiter):
            return lambda i: limiter.decide([limiter.check_for(limit, f"ip:{i % 1000}")])

        rl_up = await measure_rate(decider(limiters[0]), seconds=SECONDS)
        used_sessions = host_store.memory.tier.used("main")

        server.kill()
        await host_store.ping()
        assert host_store.mode is Mode.MEMORY
        down_tier = await measure_rate(resolver(managers[0]), seconds=SECONDS)
        result.add(
            Row("outage: session resolve from the host tier", down_tier, up_tier, "Redis up")
        )
        rl_down = await measure_rate(decider(limiters[0]), seconds=SECONDS)
        result.add(Row("outage: rate-limit decision in the host tier", rl_down, rl_up, "Redis up"))
        result.add(
            Row(
                "host tier: bytes per mirrored session (file rows, key + value)",
                used_sessions / SESSIONS,
                unit="bytes",
                higher_is_better=False,
            )
        )
        await host_store.close()
        await memory_store.close()
    result.write()


if __name__ == "__main__":
    asyncio.run(main())

"""bench/ratelimit.py's `limits` peer, run in a venv of its own on the clients limits declares.

`make bench` builds that venv (.venv/peers/limits, from bench/peers/limits-requirements.txt):
limits 5.8 on redis-py 7.4 and coredis 5.7, where the project's venv has redis-py 8, which
limits declares unsupported. bench/ratelimit.py starts this script with that venv's python and
asks it, one JSON line at a time on stdin, to time one of its sides for a number of seconds at
a concurrency, with the same loop as ours (bench/rates.py); it answers one JSON line on stdout.

Sides, each keyed `bench-<side>` over the same identities as ours, a limit nobody reaches:
  moving coredis   MovingWindowRateLimiter on RedisStorage("async+redis://..."): coredis, its
                   default async implementation, as limits' documentation sets it up;
  moving redispy   the same on implementation="redispy" (redis-py 7.4 asyncio);
  fixed coredis    FixedWindowRateLimiter on the default storage (inexact, cheaper).
Commands: {"op": "versions"}; {"op": "rate", "side", "concurrency", "seconds"};
{"op": "fill", "amount", "namespace"} (hits one moving-window key `amount` times, answers its
key for MEMORY USAGE).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/rates.py

from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from rates import measure_rate


def sides(url: str, identities: int, policy: str) -> dict[str, Callable[[int], Awaitable[None]]]:
    item = parse(policy)
    default = RedisStorage(f"async+{url}")
    redispy = RedisStorage(f"async+{url}", implementation="redispy")
    strategies = {
        "moving coredis": MovingWindowRateLimiter(default),
        "moving redispy": MovingWindowRateLimiter(redispy),
        "fixed coredis": FixedWindowRateLimiter(default),
    }
    names = [str(n) for n in range(identities)]
    calls = {}
    for side, strategy in strategies.items():
        namespace = "bench-" + side.replace(" ", "-")

        async def hit(i: int, strategy=strategy, namespace=namespace) -> None:
            if not await strategy.hit(item, namespace, names[i % identities]):
                raise RuntimeError(f"limits refused a hit under {policy}: the bench is wrong")

        calls[side] = hit
    return calls


async def serve(url: str, identities: int, policy: str) -> None:
    calls = sides(url, identities, policy)
    filler = MovingWindowRateLimiter(RedisStorage(f"async+{url}", implementation="redispy"))
    while line := await asyncio.to_thread(sys.stdin.readline):
        command = json.loads(line)
        reply: dict[str, Any]
        try:
            if command["op"] == "versions":
                reply = {p: importlib.metadata.version(p) for p in ("limits", "redis", "coredis")}
            elif command["op"] == "rate":
                rate = await measure_rate(
                    calls[command["side"]],
                    concurrency=command["concurrency"],
                    seconds=command["seconds"],
                )
                reply = {"rate": rate}
            elif command["op"] == "fill":
                item = parse(f"{command['amount']}/hour")
                for _ in range(command["amount"]):
                    await filler.hit(item, command["namespace"], "mem")
                reply = {"key": item.key_for(command["namespace"], "mem")}
            else:
                reply = {"error": f"unknown op {command['op']!r}"}
        except Exception as exc:  # the bench reports it and stops; this process goes on
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    redis_url, count, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    asyncio.run(serve(redis_url, count, limit))

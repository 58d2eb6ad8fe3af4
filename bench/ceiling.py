"""The ceiling: what Redis itself and a bare redis-py client do on this machine, next to ours.

One private redis-server. redis-benchmark (C, 50 clients) gives the server's own limit for
GET and for EVALSHA of a one-line script; raw redis-py (asyncio, 64 concurrent callers, one
command each) is what a Python process gets without batching; ours is the store's `get`
(a Lua GET, auto-pipelined) from the same 64 callers.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import redis.asyncio as aioredis

from common import Result, Row, measure_rate, redis_server
from upak.config import load_settings
from upak.store import build_store
from upak.store.primitives import GET
from upak.store.redis import script_sha


def redis_benchmark(port: int, *command: str) -> float:
    """Requests/s redis-benchmark reports for `command` (50 clients, no pipelining)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark is not installed (Debian package redis-tools)")
    output = subprocess.run(
        [binary, "-p", str(port), "-n", "100000", "-c", "50", "-q", *command],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rates = re.findall(r"([\d.]+) requests per second", output)
    return float(rates[-1])


async def main() -> None:
    result = Result("ceiling", "The ceiling: redis-benchmark and raw redis-py next to ours")
    with redis_server() as server:
        client = aioredis.Redis(port=server.port)
        await client.set("upak:ceiling", "x" * 64)
        sha = await client.script_load(GET.lua)
        assert sha == script_sha(GET.lua)
        store = build_store(load_settings(env_file=None, redis_url=server.url))
        await store.start()

        ours = await measure_rate(lambda i: store.get("upak:ceiling"), concurrency=64)
        raw = await measure_rate(lambda i: client.get("upak:ceiling"), concurrency=64)
        raw_script = await measure_rate(
            lambda i: client.evalsha(sha, 1, "upak:ceiling"), concurrency=64
        )
        c_get = redis_benchmark(server.port, "GET", "upak:ceiling")
        c_script = redis_benchmark(server.port, "EVALSHA", sha, "1", "upak:ceiling")
        await store.close()
        await client.aclose()
    result.add(
        Row(
            "GET, one Python process: ours (Lua GET, pipelined) vs raw redis-py GET",
            ours,
            raw,
            "redis-py GET, 64 concurrent",
        )
    )
    result.add(
        Row(
            "GET, one Python process: ours vs raw redis-py EVALSHA of the same script",
            ours,
            raw_script,
            "redis-py EVALSHA, 64 concurrent",
        )
    )
    result.add(
        Row(
            "GET: ours vs redis-benchmark (C client, 50 connections)",
            ours,
            c_get,
            "redis-benchmark GET",
        )
    )
    result.add(
        Row(
            "EVALSHA: ours vs redis-benchmark (C client, 50 connections)",
            ours,
            c_script,
            "redis-benchmark EVALSHA",
        )
    )
    result.notes.append(
        "redis-benchmark is the server's own ceiling on these 2 cores; a Python process is "
        "CPU-bound well below it, and batching is what closes part of the gap."
    )
    result.write()


if __name__ == "__main__":
    asyncio.run(main())

"""The ceiling: what Redis itself and a bare redis-py client do on this machine, next to ours.

One private redis-server. The server's own limit, batched as ours is: redis-benchmark (C, 50
clients) pipelining 16 commands (`-P 16`) for GET and for EVALSHA of the one-line GET script,
and one EVALSHA carrying 64 GETs (a loop in Lua: the most one round trip can batch), counted
in GETs. Unpipelined redis-benchmark is not the peer: ours pipelines, so that comparison would
flatter us. Raw redis-py (asyncio, 64 concurrent callers, one command each) is what a Python
process gets without batching; ours is the store's `get` (a Lua GET, auto-pipelined) from the
same 64 callers, one hot key throughout.
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

PIPELINE = 16
BATCH = 64
# One round trip, BATCH GETs of the same key: the ceiling of batching inside one script call.
BATCH_LUA = f"for i = 1, {BATCH} do redis.call('GET', KEYS[1]) end return {BATCH}"


def redis_benchmark(port: int, *command: str) -> float:
    """Requests/s redis-benchmark reports for `command` (50 clients, PIPELINE deep)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark is not installed (Debian package redis-tools)")
    output = subprocess.run(
        [binary, "-p", str(port), "-n", "200000", "-c", "50", "-P", str(PIPELINE), "-q", *command],
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
        batch_sha = await client.script_load(BATCH_LUA)
        c_batch = BATCH * redis_benchmark(server.port, "EVALSHA", batch_sha, "1", "upak:ceiling")
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
            "GET: ours (64 concurrent) vs redis-benchmark GET -P 16",
            ours,
            c_get,
            f"redis-benchmark GET, 50 connections, -P {PIPELINE}",
        )
    )
    result.add(
        Row(
            "EVALSHA: ours (64 concurrent) vs redis-benchmark EVALSHA -P 16",
            ours,
            c_script,
            f"redis-benchmark EVALSHA, 50 connections, -P {PIPELINE}",
        )
    )
    result.add(
        Row(
            f"GETs/s: ours (64 concurrent) vs one EVALSHA carrying {BATCH} GETs",
            ours,
            c_batch,
            f"redis-benchmark EVALSHA of a {BATCH}-GET loop, -P {PIPELINE}, x{BATCH}",
        )
    )
    result.notes.append(
        "redis-benchmark, pipelined 16 deep and with 64 GETs per script call, is the server's "
        "own ceiling on these 2 cores (it shares them with redis-server): ours is expected "
        "below 1x here; the rows say how much of the ceiling one Python process reaches. "
        "One hot key throughout."
    )
    result.write()


if __name__ == "__main__":
    asyncio.run(main())

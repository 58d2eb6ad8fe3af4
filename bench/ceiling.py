"""The ceiling: what Redis itself and a bare redis-py client do on this machine, next to ours.

One private redis-server. The server's own limit, batched as ours is: redis-benchmark (C, 50
clients) pipelining 16 commands (`-P 16`) for GET and for EVALSHA of the one-line GET script,
and one EVALSHA carrying 64 GETs (a loop in Lua: the most one round trip can batch), counted
in GETs. Unpipelined redis-benchmark is not the peer: ours pipelines, so that comparison would
flatter us. Raw redis-py (asyncio, 64 concurrent callers, one command each) is what a Python
process gets without batching; ours is the store's `get` (a Lua GET, auto-pipelined) from the
same callers, 1 and 64 of them, every side warmed and timed in paired rounds whose order is
reversed each round (bench/rates.py); one hot key throughout.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import redis.asyncio as aioredis

from common import Result, Row, alternating, meter, redis_server
from rates import mean
from upak.config import load_settings
from upak.store import build_store
from upak.store.primitives import GET
from upak.store.redis import script_sha

PIPELINE = 16
CONCURRENCY = 64
CONCURRENCIES = (1, CONCURRENCY)
SECONDS = 2.0  # per side, over the paired rounds
KEY = "upak:ceiling"
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
        await client.set(KEY, "x" * 64)
        sha = await client.script_load(GET.lua)
        assert sha == script_sha(GET.lua)
        store = build_store(load_settings(env_file=None, redis_url=server.url))
        await store.start()

        calls = {
            "ours": lambda i: store.get(KEY),
            "raw GET": lambda i: client.get(KEY),
            "raw EVALSHA": lambda i: client.evalsha(sha, 1, KEY),
        }
        rates = {}
        for concurrency in CONCURRENCIES:
            meters = {name: meter(call, concurrency) for name, call in calls.items()}
            rates[concurrency] = {
                name: mean(r) for name, r in (await alternating(meters, seconds=SECONDS)).items()
            }
        c_get = redis_benchmark(server.port, "GET", KEY)
        c_script = redis_benchmark(server.port, "EVALSHA", sha, "1", KEY)
        batch_sha = await client.script_load(BATCH_LUA)
        c_batch = BATCH * redis_benchmark(server.port, "EVALSHA", batch_sha, "1", KEY)
        await store.close()
        await client.aclose()
    paired = "one hot key, a 64-byte value; every side warmed, paired rounds in alternating order"
    for concurrency in CONCURRENCIES:
        callers = f"{concurrency} concurrent caller{'s' if concurrency > 1 else ''}"
        for peer, peer_name in (("raw GET", "redis-py GET"), ("raw EVALSHA", "redis-py EVALSHA")):
            result.add(
                Row(
                    f"GETs/s, one Python process, {callers}: ours (Lua GET, auto-pipelined) "
                    f"vs raw {peer_name} of the same key",
                    rates[concurrency]["ours"],
                    rates[concurrency][peer],
                    f"{peer_name}, {callers}",
                    setup=f"{callers}; {paired}; peer: redis.asyncio, default pool, hiredis",
                )
            )
    ours = rates[CONCURRENCY]["ours"]
    ceiling = (
        f"ours: 64 concurrent callers in one Python process; peer: redis-benchmark, 50 "
        f"connections, -P {PIPELINE}, 200,000 requests, one hot key, on the same 2 cores as "
        "redis-server"
    )
    result.add(
        Row(
            f"GETs/s: ours (64 concurrent) vs redis-benchmark GET -P {PIPELINE}",
            ours,
            c_get,
            f"redis-benchmark GET, 50 connections, -P {PIPELINE}",
            setup=ceiling,
        )
    )
    result.add(
        Row(
            f"GETs/s: ours (64 concurrent) vs redis-benchmark EVALSHA -P {PIPELINE}",
            ours,
            c_script,
            f"redis-benchmark EVALSHA, 50 connections, -P {PIPELINE}",
            setup=ceiling,
        )
    )
    result.add(
        Row(
            f"GETs/s: ours (64 concurrent) vs one EVALSHA carrying {BATCH} GETs",
            ours,
            c_batch,
            f"redis-benchmark EVALSHA of a {BATCH}-GET loop, -P {PIPELINE}, x{BATCH}",
            setup=f"{ceiling}; each script call {BATCH} GETs, counted in GETs",
        )
    )
    result.extra["rates"] = {str(c): r for c, r in rates.items()}
    result.notes.append(
        "redis-benchmark, pipelined 16 deep and with 64 GETs per script call, is the server's "
        "own ceiling on these 2 cores (it shares them with redis-server): ours is expected "
        "below 1x here; the rows say how much of the ceiling one Python process reaches. "
        "One hot key throughout."
    )
    result.write()


if __name__ == "__main__":
    asyncio.run(main())

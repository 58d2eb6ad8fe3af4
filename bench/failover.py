"""What an outage costs a caller: latency of a store call with Redis healthy, down and hung.

One run, one private redis-server. Each phase times the same claim-once call; the peer is a
plain redis-py client with the same socket timeout, which pays that timeout on every call
while Redis hangs (and fails every call while it is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import redis.asyncio as aioredis

from common import Result, Row, percentiles, redis_server
from upak.config import load_settings
from upak.store import Mode, build_store

CALLS = 2000
TIMEOUT = 0.25
WARMUP_CALLS = 200
ROUNDS = 4


async def timed_calls(call, n: int) -> list[float]:
    samples = []
    for i in range(n):
        started = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - started)
    return samples


async def main() -> None:
    result = Result("failover", "Failover: added latency of a call during an outage")
    counter = itertools.count()
    with redis_server() as server:
        settings = load_settings(
            env_file=None,
            redis_url=server.url,
            redis_socket_timeout=TIMEOUT,
            redis_connect_timeout=TIMEOUT,
        )
        store = build_store(settings)
        await store.start()
        peer = aioredis.Redis(
            port=server.port, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )

        async def ours(_: int) -> None:
            await store.claim_once(f"upak:replay:{next(counter)}", 60_000)

        async def raw(_: int) -> None:
            # The peer's caller would see these errors; here only the time counts.
            with contextlib.suppress(Exception):
                await peer.set(f"peer:{next(counter)}", 1, nx=True, px=60_000)

        # Healthy: both warmed, then paired rounds in alternating order (the two figures
        # are compared); hung and down are not raced (the peer waits out its timeout).
        samples: dict[str, list[float]] = {"ours": [], "peer": []}
        sides = {"ours": ours, "peer": raw}
        for side in sides.values():
            await timed_calls(side, WARMUP_CALLS)
        for n in range(ROUNDS):
            for name in ("ours", "peer") if n % 2 == 0 else ("peer", "ours"):
                samples[name] += await timed_calls(sides[name], CALLS // ROUNDS)
        healthy = percentiles(samples["ours"])
        peer_healthy = percentiles(samples["peer"])

        server.pause()  # hung: the port accepts, nothing answers
        first_hung = await timed_calls(ours, 1)
        hung = percentiles(await timed_calls(ours, CALLS))
        peer_hung = percentiles(await timed_calls(raw, 5))  # each waits out timeout and retries
        assert store.mode is Mode.MEMORY
        server.resume()
        while store.mode is not Mode.REDIS:
            await asyncio.sleep(0.01)

        server.kill()  # down: connections refused
        first_down = await timed_calls(ours, 1)
        down = percentiles(await timed_calls(ours, CALLS))
        peer_down = percentiles(await timed_calls(raw, 5))  # each fails after its retries
        server.start()
        recovered_at = time.perf_counter()
        while store.mode is not Mode.REDIS:
            await asyncio.sleep(0.01)
        recovery = time.perf_counter() - recovered_at
        await store.close()
        await peer.aclose()

    print(f"claim-once latency, {CALLS} sequential calls per phase (ms)")
    peer_name = "redis-py SET NX, default retries, same timeout, 1 caller"
    phases = (
        ("Redis healthy", healthy, peer_healthy),
        ("Redis hung (SIGSTOP)", hung, peer_hung),
        ("Redis down (killed)", down, peer_down),
    )
    peer_calls = {"Redis healthy": CALLS, "Redis hung (SIGSTOP)": 5, "Redis down (killed)": 5}
    for label, figures, peer_figures in phases:
        paired = "both warmed, paired rounds in alternating order; " if "healthy" in label else ""
        for q in ("p50", "p99"):
            result.add(
                Row(
                    f"{q} latency, {label}, 1 caller, {CALLS} sequential calls",
                    figures[q],
                    peer_figures[q],
                    peer_name,
                    unit="ms",
                    higher_is_better=False,
                    # Healthy: two round trips compared. Hung or down: our memory answer next
                    # to the peer's timeout and retries; the two figures, no ratio.
                    comparable=label == "Redis healthy",
                    setup=f"1 caller, sequential; a new key per call; {paired}peer: redis.asyncio "
                    f"SET NX PX, socket and connect timeout {TIMEOUT} s, default retries, "
                    f"{peer_calls[label]:,} calls",
                )
            )
    for label, figures, _ in phases[1:]:
        for q in ("p50", "p99"):
            result.add(
                Row(
                    f"added {q} vs healthy, {label}",
                    figures[q] - healthy[q],
                    unit="ms",
                    higher_is_better=False,
                )
            )
    result.add(
        Row(
            "first call when Redis hangs (pays the socket timeout once)",
            first_hung[0] * 1000,
            unit="ms",
            higher_is_better=False,
        )
    )
    result.add(
        Row(
            "first call when Redis is down (connection refused)",
            first_down[0] * 1000,
            unit="ms",
            higher_is_better=False,
        )
    )
    result.add(
        Row("Redis back -> store back on Redis", recovery * 1000, unit="ms", higher_is_better=False)
    )
    result.notes.append(
        "While Redis hangs or is down every peer call fails after waiting out its socket "
        f"timeout ({TIMEOUT}s) and redis-py's default retries; ours pays one timeout once, "
        "then the breaker serves from memory with no error. Negative added latency: memory "
        "answers faster than a network round trip. Hung and down rows carry no ratio: a "
        "microsecond memory answer next to a timeout is two figures, not a speed-up. Healthy: "
        f"{WARMUP_CALLS} warm-up calls each, then {ROUNDS} rounds of {CALLS // ROUNDS} calls "
        "per side, the order reversed each round."
    )
    result.write()


if __name__ == "__main__":
    asyncio.run(main())

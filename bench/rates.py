"""Rates and paired rounds: the timing every bench script shares, on the standard library alone.

Kept apart from bench/common.py (which brings the service and the suite's redis launcher) so a
peer running in a venv of its own (bench/peers/limits_peer.py) times itself with the very same
loop as ours.

A "meter" is `async (seconds) -> calls per second`: an in-process caller wrapped by `meter()`,
or a peer in another process asked to measure itself. `alternating()` runs meters in paired
rounds: every side warmed first, then each round times every side once, the order reversed
each round, so no side is always timed first, last, or on a cold client.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping

Meter = Callable[[float], Awaitable[float]]
WARMUP_SECONDS = 0.3
ROUNDS = 4  # even: each side is timed first and last equally often


async def measure_rate(
    call: Callable[[int], Awaitable[object]], *, concurrency: int = 64, seconds: float = 2.0
) -> float:
    """Calls per second of `call(i)` from `concurrency` concurrent tasks for `seconds`."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            await call(i)
            done += 1
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return done / (time.perf_counter() - started)


def meter(call: Callable[[int], Awaitable[object]], concurrency: int) -> Meter:
    """`call` from `concurrency` concurrent tasks, as a meter."""

    async def measure(seconds: float) -> float:
        return await measure_rate(call, concurrency=concurrency, seconds=seconds)

    return measure


async def alternating(
    meters: Mapping[str, Meter],
    *,
    seconds: float,
    rounds: int = ROUNDS,
    warmup: float = WARMUP_SECONDS,
) -> dict[str, list[float]]:
    """Each side's rate in each of `rounds` rounds of `seconds / rounds`, after a warm-up of
    `warmup` seconds per side; round n times the sides in order, round n+1 in reverse."""
    for measure in meters.values():
        await measure(warmup)
    names = list(meters)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for n in range(rounds):
        for name in names if n % 2 == 0 else reversed(names):
            rates[name].append(await meters[name](seconds / rounds))
    return rates


def mean(rates: list[float]) -> float:
    return statistics.fmean(rates)

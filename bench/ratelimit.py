"""Rate limiting: decisions/s of one process and HTTP req/s of one route, next to the peers.

One run on one private redis-server:
* decisions per second of one asyncio process (64 concurrent callers, 10,000 identities, a
  limit nobody reaches so every decision goes to Redis): our sliding log and our GCRA through
  the store (auto-pipelined), `limits` moving window and fixed window (async redis-py
  storage), and our script sent with raw redis-py EVALSHA (no store, no pipelining);
* memory per key (MEMORY USAGE) of each algorithm at a full window of 10, 100 and 1000;
* HTTP requests/s of one route under uvicorn (1 worker, same flags) with our middleware,
  without it, and under slowapi, from wrk in a separate process (bounded in time); the
  server pinned to a core of its own, wrk and redis-server to the other;
* the same three servers' instructions per request, counted by callgrind on the live
  server: the figure the machine's noise cannot move.
Targets (the issue): >= 3x `limits`' moving window; the limited route >= 0.8x the unlimited.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio
from limits import parse as parse_limit
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from common import ROOT, RedisServer, Result, Row, measure_rate, redis_server
from upak.config import load_settings
from upak.features.ratelimit import DECIDE_LUA, RateLimiter, identity_token, named_limits
from upak.store import KeySpace, build_store
from upak.store.redis import script_sha

HERE = Path(__file__).resolve().parent
IDENTITIES = 10_000
POLICY = "1000/minute"  # far above what one identity gets in a run: every call goes to Redis
SECONDS = 2.0
CONCURRENCY = 64
HTTP_SECONDS = 3
HTTP_ROUNDS = 5
HTTP_CONNECTIONS = 32


# --- decisions ------------------------------------------------------------------------------

CONCURRENCIES = (1, CONCURRENCY)  # one caller: no batching to win by; 64: ours pipelines
DECISION_ROUNDS = 3


async def alternated(
    calls: dict[str, Callable[[int], Awaitable[object]]], concurrency: int
) -> dict[str, float]:
    """Mean decisions/s of each caller: every side warmed first, then DECISION_ROUNDS rounds,
    the order reversed each round, so no side is always timed first or on a cold client."""
    for call in calls.values():
        await measure_rate(call, concurrency=concurrency, seconds=0.3)
    totals = dict.fromkeys(calls, 0.0)
    names = list(calls)
    for n in range(DECISION_ROUNDS):
        for name in names if n % 2 == 0 else reversed(names):
            totals[name] += await measure_rate(
                calls[name], concurrency=concurrency, seconds=SECONDS / DECISION_ROUNDS
            )
    return {name: total / DECISION_ROUNDS for name, total in totals.items()}


async def decisions(result: Result, url: str) -> None:
    settings = load_settings(env_file=None, redis_url=url, redis_key_prefix="bench:")
    store = build_store(settings)
    await store.start()
    limiter = RateLimiter(store, KeySpace("bench:"), blocked_max=0)
    idents = [
        identity_token("ip", f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        for n in range(IDENTITIES)
    ]
    calls: dict[str, Callable[[int], Awaitable[object]]] = {}
    for algorithm, policy in (("sliding log", POLICY), ("GCRA", POLICY + ":gcra")):
        (limit,) = named_limits("bench-" + algorithm.split()[0].lower(), policy)
        checks = [limiter.check_for(limit, who) for who in idents]

        async def decide(i: int, checks=checks) -> None:
            decision = await limiter.decide([checks[i % IDENTITIES]])
            assert decision.allowed

        calls[algorithm] = decide

    raw = redis.asyncio.Redis.from_url(url, max_connections=CONCURRENCY)
    sha = await raw.script_load(DECIDE_LUA)
    assert sha == script_sha(DECIDE_LUA)
    raw_keys = [f"bench:raw:{{{who}}}" for who in idents]

    async def raw_evalsha(i: int) -> None:
        await raw.evalsha(sha, 1, raw_keys[i % IDENTITIES], 1, "l", 1000, 60_000)

    calls["raw"] = raw_evalsha

    storage = RedisStorage(f"async+{url}", implementation="redispy")
    item = parse_limit(POLICY)
    for name, strategy in (
        ("moving", MovingWindowRateLimiter(storage)),
        ("fixed", FixedWindowRateLimiter(storage)),
    ):

        async def hit(i: int, strategy=strategy, name=name) -> None:
            assert await strategy.hit(item, f"bench-{name}", str(i % IDENTITIES))

        calls[name] = hit

    peer_moving = "limits moving window, async redis-py"
    for concurrency in CONCURRENCIES:
        rates = await alternated(calls, concurrency)
        callers = f"{concurrency} concurrent caller{'s' if concurrency > 1 else ''}"
        result.add(
            Row(
                f"decisions/s, sliding log (exact), one process, {callers}",
                rates["sliding log"],
                rates["moving"],
                peer_moving,
            )
        )
        result.add(
            Row(
                f"decisions/s, GCRA, one process, {callers}",
                rates["GCRA"],
                rates["moving"],
                peer_moving,
            )
        )
        result.add(
            Row(
                f"decisions/s, sliding log vs limits fixed window (inexact), {callers}",
                rates["sliding log"],
                rates["fixed"],
                "limits fixed window, async redis-py",
            )
        )
        result.add(
            Row(
                f"decisions/s, sliding log through the store vs raw EVALSHA, {callers}",
                rates["sliding log"],
                rates["raw"],
                "redis-py EVALSHA, same script",
            )
        )

    await memory_per_key(result, raw, limiter, storage)
    await raw.aclose()
    await store.close()


async def memory_per_key(result: Result, raw, limiter: RateLimiter, storage: RedisStorage) -> None:
    """MEMORY USAGE of one key holding a full window, for each algorithm."""
    usage: dict[str, int] = {}
    for amount in (10, 100, 1000):
        for algorithm in ("", ":gcra"):
            (limit,) = named_limits(f"mem{amount}{algorithm[1:]}", f"{amount}/hour{algorithm}")
            check = limiter.check_for(limit, identity_token("ip", "192.0.2.1"))
            for _ in range(amount):
                await limiter.decide([check])
            usage[f"{amount}{algorithm}"] = await raw.memory_usage(check.key, samples=0)
        item = parse_limit(f"{amount}/hour")
        moving = MovingWindowRateLimiter(storage)
        for _ in range(amount):
            await moving.hit(item, "mem", str(amount))
        keys = [k async for k in raw.scan_iter(match=f"*{item.key_for('mem', str(amount))}*")]
        usage[f"{amount} limits"] = await raw.memory_usage(keys[0], samples=0)
    for amount in (10, 100, 1000):
        result.add(
            Row(
                f"bytes per key at {amount} in the window, sliding log",
                usage[str(amount)],
                usage[f"{amount} limits"],
                "limits moving window",
                unit="bytes",
                higher_is_better=False,
            )
        )
        result.add(
            Row(
                f"bytes per key at {amount} in the window, GCRA",
                usage[f"{amount}:gcra"],
                usage[f"{amount} limits"],
                "limits moving window",
                unit="bytes",
                higher_is_better=False,
            )
        )
    result.extra["memory_per_key_bytes"] = usage


# --- HTTP -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The server under test gets a core of its own; wrk and redis-server share the other. On two
# shared cores the scheduler otherwise preempts uvicorn for redis-server (which only the
# limited server needs) or wrk at random: that noise was larger than the limiter's cost.
SERVER_CPUS = {1} if (os.cpu_count() or 1) >= 2 else None
LOAD_CPUS = {0} if SERVER_CPUS else None


def pin(pid: int, cpus: set[int] | None) -> None:
    """Every thread of `pid` onto `cpus` (threads started later inherit it)."""
    if cpus is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


@contextlib.contextmanager
def server(
    factory: str,
    url: str,
    *,
    prefix: str | None = None,
    wrapper: Sequence[str] = (),
    start_timeout: float = 30,
    module: str = "bench.peers.ratelimit_apps",
    probe: str = "/items",
    env_extra: dict[str, str] | None = None,
) -> Iterator[tuple[str, int]]:
    """uvicorn serving `factory` (of `module`, bench/peers/ratelimit_apps.py by default),
    optionally under `wrapper` (valgrind); yields its base URL and pid once `probe` answers."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="upak-bench-rl-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "UPAK_", "RATE_"))}
    env.update(
        REDIS_URL=url,
        REDIS_KEY_PREFIX=prefix or f"http-{factory}:",
        RATE_LIMIT_DEFAULT=POLICY,
        TRUSTED_PROXIES="127.0.0.1",
        DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/upak.db",
        LOG_LEVEL="WARNING",
        PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'src'}",
    )
    env.update(env_extra or {})
    proc = subprocess.Popen(
        [
            *wrapper,
            sys.executable,
            "-m",
            "uvicorn",
            f"{module}:{factory}",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-access-log",
            "--no-proxy-headers",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{factory} server exited: {proc.stderr.read().decode()[-2000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + probe, timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{factory} server did not answer within {start_timeout} s")
            time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def paired_wrk(
    urls: dict[str, str], requests_file: Path, rounds: int, seconds: float, label: str
) -> tuple[dict[str, list[float]], list[float]]:
    """`rounds` rounds of one counted wrk run per side of `urls` (peer first, ours second),
    the order reversed each round so no side is always timed first. Each side's req/s per
    round, and each round's ratio ours / peer. A run where fewer than 99% of the answers
    were 200 is refused (RuntimeError), never reported."""
    peer, ours = urls
    runs: dict[str, list[float]] = {peer: [], ours: []}
    ratios = []
    for n in range(rounds):
        order = (peer, ours) if n % 2 == 0 else (ours, peer)
        this = {side: wrk(urls[side], requests_file, seconds, LOAD_CPUS) for side in order}
        for side, run in this.items():
            if run["ok"] < 0.99:
                raise RuntimeError(f"{side} {label}: only {run['ok']:.1%} answered 200")
            runs[side].append(run["rps"])
        ratios.append(this[ours]["rps"] / this[peer]["rps"])
    return runs, ratios


def wrk(
    base: str, requests_file: Path, seconds: float, cpus: set[int] | None = None
) -> dict[str, float]:
    wrk_bin = shutil.which("wrk")
    if wrk_bin is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    output = subprocess.run(
        [
            wrk_bin,
            "-t1",
            f"-c{HTTP_CONNECTIONS}",
            f"-d{int(seconds)}s",
            "--timeout",
            "5s",
            "-s",
            str(HERE / "wrk" / "replay.lua"),
            base,
            "--",
            str(requests_file),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    ).stdout
    data = json.loads(re.search(r"WRKJSON (\{.*\})", output).group(1))  # type: ignore[union-attr]
    statuses = {int(k): v for k, v in data["status"].items()}
    return {
        "requests": data["requests"],
        "rps": data["requests"] / (data["duration_us"] / 1e6),
        "p99_ms": data["p99_us"] / 1000,
        "ok": statuses.get(200, 0) / max(1, data["requests"]),
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_file(clients: int = 5000) -> Path:
    path = Path(tempfile.mkdtemp(prefix="upak-bench-rl-")) / "items.txt"
    with path.open("w") as out:
        # `clients` clients behind one trusted proxy; nobody reaches the limit in the run.
        for n in range(clients):
            out.write(f"GET\x1e/items\x1eX-Forwarded-For: 10.1.{n // 256}.{n % 256}\x1e\n")
    return path


FACTORIES = {"ours": "our middleware", "unlimited": "no limiter", "slowapi": "slowapi"}


def http(result: Result, redis: RedisServer) -> None:
    requests = requests_file()
    pin(redis.proc.pid, LOAD_CPUS)
    runs: dict[str, list[dict[str, float]]] = {}
    # Ours and unlimited interleaved, round after round: the machine drifts, so each round's
    # pair is compared with itself and the median of those ratios is the figure.
    for turn, factory in enumerate(("unlimited", "ours") * HTTP_ROUNDS + ("slowapi",) * 2):
        # Each round on an empty Redis (the bench's own server), as the first: otherwise the
        # limiter trims the logs earlier rounds left, and a minute in their 5,000 keys expire
        # together, Redis's expiry cycle taking the CPU that wrk shares with it.
        redis.client().flushall()
        with server(factory, redis.url, prefix=f"http-{factory}-{turn}:") as (base, pid):
            pin(pid, SERVER_CPUS)
            wrk(base, requests, 1, LOAD_CPUS)  # warm-up: connections, scripts, memo tables
            cpu_before, redis_before = _cpu_seconds(pid), _cpu_seconds(redis.proc.pid)
            run = wrk(base, requests, HTTP_SECONDS, LOAD_CPUS)
            run["cpu_us"] = (_cpu_seconds(pid) - cpu_before) * 1e6 / run["requests"]
            # The server has core 1 to itself while redis-server shares wrk's core 0: charge
            # Redis's CPU of the run to the server it served (slowapi's and ours' alike).
            redis_us = (_cpu_seconds(redis.proc.pid) - redis_before) * 1e6 / run["requests"]
            run["cpu_with_redis_us"] = run["cpu_us"] + redis_us
        runs.setdefault(factory, []).append(run)
        print(
            f"    {factory:<10} {run['rps']:>9,.0f} req/s  p99 {run['p99_ms']:5.1f} ms  "
            f"server CPU {run['cpu_us']:6.1f} us/req  200s {run['ok']:.1%}"
        )
    med = {f: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for f, rs in runs.items()}
    paired = [o["rps"] / u["rps"] for o, u in zip(runs["ours"], runs["unlimited"], strict=True)]
    result.add(
        Row(
            "HTTP req/s, GET /items with our middleware vs without (median)",
            med["ours"]["rps"],
            med["unlimited"]["rps"],
            "same route, no limiter",
            unit="req/s",
        )
    )
    result.add(
        Row(
            f"HTTP req/s with vs without our middleware, median of {HTTP_ROUNDS} paired rounds",
            statistics.median(paired),
            unit="x",
        )
    )
    result.add(
        Row(
            "server CPU us per request, with our middleware vs without (median)",
            med["ours"]["cpu_us"],
            med["unlimited"]["cpu_us"],
            "same route, no limiter",
            unit="us",
            higher_is_better=False,
        )
    )
    for factory, peer in (("unlimited", "same route, no limiter"), ("slowapi", "slowapi")):
        result.add(
            Row(
                f"server + redis-server CPU us per request, ours vs {FACTORIES[factory]}",
                med["ours"]["cpu_with_redis_us"],
                med[factory]["cpu_with_redis_us"],
                peer,
                unit="us",
                higher_is_better=False,
            )
        )
    result.add(
        Row(
            "HTTP req/s, GET /items with our middleware vs slowapi",
            med["ours"]["rps"],
            med["slowapi"]["rps"],
            "slowapi moving window",
            unit="req/s",
        )
    )
    result.add(
        Row(
            "server CPU us per request, our middleware vs slowapi",
            med["ours"]["cpu_us"],
            med["slowapi"]["cpu_us"],
            "slowapi moving window",
            unit="us",
            higher_is_better=False,
        )
    )
    for factory, peer in (("unlimited", "same route, no limiter"), ("slowapi", "slowapi")):
        result.add(
            Row(
                f"HTTP p99 ms, GET /items with our middleware vs {FACTORIES[factory]}",
                med["ours"]["p99_ms"],
                med[factory]["p99_ms"],
                peer,
                unit="ms",
                higher_is_better=False,
            )
        )
    result.extra["http_runs"] = runs
    result.extra["http_paired_ratios"] = paired


# --- instructions per request of the live server (callgrind): the same, without the noise ---

CALLGRIND_WARMUP_S = 15
CALLGRIND_CLIENTS = 500
CALLGRIND_SECONDS = 25


def instructions_per_request(
    factory: str,
    url: str,
    requests: Path,
    *,
    warmup: float = CALLGRIND_WARMUP_S,
    seconds: float = CALLGRIND_SECONDS,
    **launch: Any,
) -> float:
    """Instructions the uvicorn process executes per request, counted by callgrind between
    a warm-up and the end of a wrk run: deterministic for the same code and load, whatever
    the rest of the machine does (valgrind counts instructions, not seconds)."""
    outdir = Path(tempfile.mkdtemp(prefix="upak-bench-cg-"))
    wrapper = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={outdir}/cg.%p",
    ]
    with server(factory, url, wrapper=wrapper, start_timeout=240, **launch) as (base, pid):
        wrk(base, requests, warmup)  # memo tables and caches filled
        subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
        counted_run = wrk(base, requests, seconds)
        if counted_run["ok"] < 0.99:  # a count of 401s or 429s is not a count of the route
            raise RuntimeError(f"{factory}: only {counted_run['ok']:.0%} of responses were 200")
        served = counted_run["requests"]
        subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
        (dump,) = outdir.glob("cg.*.1")
        counted = int(re.search(r"^summary: (\d+)", dump.read_text(), re.M).group(1))  # type: ignore[union-attr]
    return counted / served


def instructions(result: Result, url: str) -> None:
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        result.notes.append(
            "valgrind not installed: no instruction counts (apt-get install valgrind)"
        )
        return
    # Steady state: at valgrind's ~150 req/s the warm-up must have seen every client once, or
    # the count is of first requests (an address parsed, its keys built), not of requests.
    requests = requests_file(CALLGRIND_CLIENTS)
    counts: dict[str, float] = {}
    # Two at a time (two cores): each runs ~50x slower under valgrind, so wrk and Redis idle.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for batch in (("ours", "unlimited"), ("slowapi",)):
            jobs = {f: pool.submit(instructions_per_request, f, url, requests) for f in batch}
            counts.update({f: job.result() for f, job in jobs.items()})
    for factory, peer in (("unlimited", "same route, no limiter"), ("slowapi", "slowapi")):
        result.add(
            Row(
                f"server instructions per request, our middleware vs {FACTORIES[factory]}"
                " (callgrind, live uvicorn)",
                counts["ours"],
                counts[factory],
                peer,
                unit="instr",
                higher_is_better=False,
            )
        )
    result.extra["instructions_per_request"] = counts


def main() -> None:
    result = Result("ratelimit", "Rate limiting: decisions/s, memory per key, HTTP overhead")
    with redis_server() as server_:
        print(f"redis-server on {server_.port}")
        asyncio.run(decisions(result, server_.url))
        http(result, server_)
        instructions(result, server_.url)
    result.notes += [
        f"Decisions: 1 and {CONCURRENCY} concurrent callers in one process, {IDENTITIES} "
        f"identities round robin, {POLICY}: nobody reaches the limit, so every decision is a "
        "Redis script call. Every side warmed 0.3 s first, then "
        f"{DECISION_ROUNDS} rounds of {SECONDS / DECISION_ROUNDS:.2f} s each, the order "
        "reversed every round; the figure is the mean. `limits` runs on the redis-py of "
        "this venv (its own RedisStorage, implementation=redispy), whatever it declares.",
        "HTTP: uvicorn, 1 worker, uvloop/httptools as installed, wrk -t1 -c"
        f"{HTTP_CONNECTIONS} from a separate process; 5,000 forwarded client IPs; "
        f"{HTTP_ROUNDS} rounds of unlimited and ours interleaved, each {HTTP_SECONDS} s "
        "after a 1 s warm-up; the server on core 1 to itself, wrk and redis-server sharing "
        "core 0, so req/s does not charge the limiter for Redis's CPU: the 'server + "
        "redis-server CPU' rows do (Redis's CPU during the run, per request served).",
        f"Instructions: {CALLGRIND_CLIENTS} client IPs, each server under valgrind "
        "--tool=callgrind, counted over "
        f"{CALLGRIND_SECONDS} s of wrk load after {CALLGRIND_WARMUP_S} s of warm-up, "
        "divided by the requests served: repeatable, and blind to what the rest of the "
        "machine does (it counts work, not time; kernel time is not in it).",
        "The machine has 2 cores shared by wrk, uvicorn, redis-server and other work: "
        "compare ratios within the run, not absolute figures across runs.",
    ]
    result.write()


if __name__ == "__main__":
    main()

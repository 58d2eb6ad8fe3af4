"""Rate limiting: decisions/s of one process and HTTP req/s of one route, next to the peers.

One run on one private redis-server:
* decisions per second of one asyncio process (1 and 64 concurrent callers, 10,000
  identities, a limit nobody reaches so every decision goes to Redis): our sliding log and our
  GCRA through the store (auto-pipelined), our script sent with raw redis-py EVALSHA (no
  store, no pipelining), and `limits` moving and fixed window in a process and venv of their
  own (bench/peers/limits_peer.py: limits on the coredis and redis-py it declares), every side
  warmed, in paired rounds whose order is reversed each round;
* memory per key (MEMORY USAGE) of each algorithm at a full window of 10, 100 and 1000;
* HTTP requests/s of one route under uvicorn (1 worker, same flags) with our middleware,
  without it, and under slowapi (on the peers' venv), from wrk in a separate process (bounded
  in time), the three alternating round by round; the server pinned to a core of its own, wrk
  and redis-server to the other, with rows that charge Redis's CPU to the server it served;
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

from common import (
    ROOT,
    RedisServer,
    Result,
    Row,
    alternating,
    callgrind_control,
    callgrind_total,
    meter,
    redis_server,
)
from rates import ROUNDS, WARMUP_SECONDS, mean
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
# The `limits` peers' venv, made by `make bench` (bench/peers/limits-requirements.txt) beside
# the project's: limits declares redis-py < 8 and coredis < 6, the project runs redis-py 8.
PEER_PYTHON = Path(sys.prefix) / "peers" / "limits" / "bin" / "python"
PEER_TIMEOUT = 60.0
PEER_VERSIONS: dict[str, str] = {}  # what the peers' venv holds, once it has answered


class LimitsPeer:
    """bench/peers/limits_peer.py in its own venv: asked to time one of its sides, as ours is
    timed here, with the same loop (bench/rates.py); one JSON line each way."""

    def __init__(self, url: str) -> None:
        if not PEER_PYTHON.exists():
            raise SystemExit(
                f"{PEER_PYTHON} is missing: `make bench` builds the limits peers' venv "
                "(make .venv/peers/limits/.installed)"
            )
        self.proc = subprocess.Popen(
            [
                str(PEER_PYTHON),
                str(HERE / "peers" / "limits_peer.py"),
                url,
                str(IDENTITIES),
                POLICY,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.versions = self.ask(op="versions")

    def ask(self, **command: object) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the limits peer exited ({self.proc.poll()}) on {command}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the limits peer failed {command}: {reply['error']}")
        return reply

    def meter(self, side: str, concurrency: int) -> Callable[[float], Awaitable[float]]:
        async def measure(seconds: float) -> float:
            reply = await asyncio.wait_for(
                asyncio.to_thread(
                    self.ask, op="rate", side=side, concurrency=concurrency, seconds=seconds
                ),
                PEER_TIMEOUT,
            )
            return float(reply["rate"])

        return measure

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def decisions(result: Result, url: str) -> None:
    settings = load_settings(env_file=None, redis_url=url, redis_key_prefix="bench:")
    store = build_store(settings)
    await store.start()
    limiter = RateLimiter(store, KeySpace("bench:"), blocked_max=0)
    idents = [
        identity_token("ip", f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        for n in range(IDENTITIES)
    ]
    ours: dict[str, Callable[[int], Awaitable[object]]] = {}
    for algorithm, policy in (("sliding log", POLICY), ("GCRA", POLICY + ":gcra")):
        (limit,) = named_limits("bench-" + algorithm.split()[0].lower(), policy)
        checks = [limiter.check_for(limit, who) for who in idents]

        async def decide(i: int, checks=checks) -> None:
            decision = await limiter.decide([checks[i % IDENTITIES]])
            assert decision.allowed

        ours[algorithm] = decide

    raw = redis.asyncio.Redis.from_url(url, max_connections=CONCURRENCY)
    sha = await raw.script_load(DECIDE_LUA)
    assert sha == script_sha(DECIDE_LUA)
    raw_keys = [f"bench:raw:{{{who}}}" for who in idents]

    async def raw_evalsha(i: int) -> None:
        await raw.evalsha(sha, 1, raw_keys[i % IDENTITIES], 1, "l", 1000, 60_000)

    ours["raw"] = raw_evalsha
    peer = LimitsPeer(url)
    try:
        versions = peer.versions
        PEER_VERSIONS.update(versions)
        result.extra["limits_peer_versions"] = versions
        coredis_name = f"limits {versions['limits']} moving window, coredis {versions['coredis']}"
        redispy_name = f"limits {versions['limits']} moving window, redis-py {versions['redis']}"
        fixed_name = f"limits {versions['limits']} fixed window, coredis {versions['coredis']}"
        runs: dict[str, dict[str, list[float]]] = {}
        for concurrency in CONCURRENCIES:
            meters = {name: meter(call, concurrency) for name, call in ours.items()}
            for side in ("moving coredis", "moving redispy", "fixed coredis"):
                meters[side] = peer.meter(side, concurrency)
            rates = await alternating(meters, seconds=SECONDS)
            runs[str(concurrency)] = rates
            avg = {name: mean(r) for name, r in rates.items()}
            callers = f"{concurrency} concurrent caller{'s' if concurrency > 1 else ''}"
            setup = (
                f"{callers}; {IDENTITIES:,} identities round robin, one key each, {POLICY} "
                "never reached; both sides warmed, paired rounds in alternating order"
            )
            for metric, ours_side, peer_side, peer_name, peer_setup in (
                (
                    "sliding log (exact)",
                    "sliding log",
                    "moving coredis",
                    coredis_name,
                    "async RedisStorage as documented (coredis, its default implementation)",
                ),
                (
                    "sliding log (exact)",
                    "sliding log",
                    "moving redispy",
                    redispy_name,
                    "async RedisStorage, implementation=redispy, hiredis installed",
                ),
                (
                    "GCRA",
                    "GCRA",
                    "moving coredis",
                    coredis_name,
                    "async RedisStorage as documented (coredis)",
                ),
                (
                    "sliding log vs a fixed window (inexact)",
                    "sliding log",
                    "fixed coredis",
                    fixed_name,
                    "async RedisStorage as documented (coredis)",
                ),
                (
                    "sliding log through the store vs raw EVALSHA",
                    "sliding log",
                    "raw",
                    "redis-py EVALSHA, same script",
                    f"redis.asyncio, pool of {CONCURRENCY}",
                ),
            ):
                result.add(
                    Row(
                        f"decisions/s, {metric}, one process, {callers}",
                        avg[ours_side],
                        avg[peer_side],
                        peer_name,
                        setup=f"{setup}; peer: {peer_setup}",
                    )
                )
        result.extra["decision_rounds"] = runs
        await memory_per_key(result, raw, limiter, peer)
    finally:
        peer.close()
    await raw.aclose()
    await store.close()


async def memory_per_key(result: Result, raw, limiter: RateLimiter, peer: LimitsPeer) -> None:
    """MEMORY USAGE of one key holding a full window, for each algorithm."""
    usage: dict[str, int] = {}
    for amount in (10, 100, 1000):
        for algorithm in ("", ":gcra"):
            (limit,) = named_limits(f"mem{amount}{algorithm[1:]}", f"{amount}/hour{algorithm}")
            check = limiter.check_for(limit, identity_token("ip", "192.0.2.1"))
            for _ in range(amount):
                await limiter.decide([check])
            usage[f"{amount}{algorithm}"] = await raw.memory_usage(check.key, samples=0)
        key = (await asyncio.to_thread(peer.ask, op="fill", amount=amount, namespace="mem"))["key"]
        keys = [k async for k in raw.scan_iter(match=f"*{key}*")]
        usage[f"{amount} limits"] = await raw.memory_usage(keys[0], samples=0)
    peer_name = f"limits {peer.versions['limits']} moving window"
    setup = "one key, filled to the window by one caller; MEMORY USAGE SAMPLES 0"
    for amount in (10, 100, 1000):
        for algorithm, suffix in (("sliding log", ""), ("GCRA", ":gcra")):
            result.add(
                Row(
                    f"bytes per key at {amount} in the window, {algorithm}",
                    usage[f"{amount}{suffix}"],
                    usage[f"{amount} limits"],
                    peer_name,
                    unit="bytes",
                    higher_is_better=False,
                    setup=setup,
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
    python: str | None = None,
) -> Iterator[tuple[str, int]]:
    """uvicorn serving `factory` (of `module`, bench/peers/ratelimit_apps.py by default),
    optionally under `wrapper` (valgrind), on `python` (this venv's by default); yields its
    base URL and pid once `probe` answers."""
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
            python or sys.executable,
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
# slowapi runs on limits' synchronous storage: on the peers' venv, where limits has the
# redis-py it declares; ours and the unlimited route on the project's.
PYTHONS = {"slowapi": str(PEER_PYTHON)}


def http(result: Result, redis: RedisServer) -> None:
    requests = requests_file()
    pin(redis.proc.pid, LOAD_CPUS)
    runs: dict[str, list[dict[str, float]]] = {}
    # The three servers in every round, the order reversed round by round: the machine
    # drifts, so each round's pair is compared with itself and the median of those ratios
    # is the figure; no side is always first or last.
    order = ("unlimited", "ours", "slowapi")
    turns = [f for n in range(HTTP_ROUNDS) for f in (order if n % 2 == 0 else order[::-1])]
    for turn, factory in enumerate(turns):
        # Each round on an empty Redis (the bench's own server), as the first: otherwise the
        # limiter trims the logs earlier rounds left, and a minute in their 5,000 keys expire
        # together, Redis's expiry cycle taking the CPU that wrk shares with it.
        redis.client().flushall()
        with server(
            factory, redis.url, prefix=f"http-{factory}-{turn}:", python=PYTHONS.get(factory)
        ) as (base, pid):
            pin(pid, SERVER_CPUS)
            wrk(base, requests, 1, LOAD_CPUS)  # warm-up: connections, scripts, memo tables
            cpu_before, redis_before = _cpu_seconds(pid), _cpu_seconds(redis.proc.pid)
            run = wrk(base, requests, HTTP_SECONDS, LOAD_CPUS)
            run["cpu_us"] = (_cpu_seconds(pid) - cpu_before) * 1e6 / run["requests"]
            # The server has core 1 to itself while redis-server shares wrk's core 0: charge
            # Redis's CPU of the run to the server it served (slowapi's and ours' alike).
            redis_us = (_cpu_seconds(redis.proc.pid) - redis_before) * 1e6 / run["requests"]
            run["cpu_with_redis_us"] = run["cpu_us"] + redis_us
        if run["ok"] < 0.99:
            raise RuntimeError(f"{factory}: only {run['ok']:.1%} of responses were 200")
        runs.setdefault(factory, []).append(run)
        print(
            f"    {factory:<10} {run['rps']:>9,.0f} req/s  p99 {run['p99_ms']:5.1f} ms  "
            f"server CPU {run['cpu_us']:6.1f} us/req  200s {run['ok']:.1%}"
        )
    med = {f: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for f, rs in runs.items()}
    paired = {
        f: [o["rps"] / p["rps"] for o, p in zip(runs["ours"], runs[f], strict=True)]
        for f in ("unlimited", "slowapi")
    }
    load = (
        f"wrk -t1 -c{HTTP_CONNECTIONS}, 5,000 client IPs round robin (one key each), limit "
        f"never reached; median of {HTTP_ROUNDS} rounds, the three servers in each, order "
        "reversed round by round, each after a 1 s warm-up"
    )
    pinned = (
        "the server on core 1 alone, redis-server on wrk's core 0: req/s is not charged for "
        "Redis's CPU (the 'server + redis-server CPU' rows are)"
    )
    peers = {
        "unlimited": ("same route, no limiter", "the same app, RATE_LIMIT_ENABLED=false"),
        "slowapi": (
            "slowapi moving window",
            "slowapi 0.1.10 decorator, moving window, limits' sync RedisStorage on redis-py "
            f"{PEER_VERSIONS.get('redis', '7')} (the peers' venv), our limiter off",
        ),
    }
    for factory, (peer_name, peer_setup) in peers.items():
        setup = f"{load}; {pinned}; peer: {peer_setup}"
        versus = FACTORIES[factory]
        result.add(
            Row(
                f"HTTP req/s, GET /items, our middleware vs {versus} (median)",
                med["ours"]["rps"],
                med[factory]["rps"],
                peer_name,
                unit="req/s",
                setup=setup,
            )
        )
        result.add(
            Row(
                f"HTTP req/s, our middleware / {versus}, median of {HTTP_ROUNDS} paired rounds",
                statistics.median(paired[factory]),
                unit="x",
                setup=setup,
            )
        )
        result.add(
            Row(
                f"server CPU us per request, our middleware vs {versus}",
                med["ours"]["cpu_us"],
                med[factory]["cpu_us"],
                peer_name,
                unit="us",
                higher_is_better=False,
                setup=setup,
            )
        )
        result.add(
            Row(
                f"server + redis-server CPU us per request, our middleware vs {versus}",
                med["ours"]["cpu_with_redis_us"],
                med[factory]["cpu_with_redis_us"],
                peer_name,
                unit="us",
                higher_is_better=False,
                setup=f"{load}; Redis's CPU during the run divided by the requests served and "
                f"added to the server's; peer: {peer_setup}",
            )
        )
        result.add(
            Row(
                f"HTTP p99 ms, GET /items, our middleware vs {versus}",
                med["ours"]["p99_ms"],
                med[factory]["p99_ms"],
                peer_name,
                unit="ms",
                higher_is_better=False,
                setup=setup,
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
        callgrind_control("zero", pid)
        counted_run = wrk(base, requests, seconds)
        if counted_run["ok"] < 0.99:  # a count of 401s or 429s is not a count of the route
            raise RuntimeError(f"{factory}: only {counted_run['ok']:.0%} of responses were 200")
        served = counted_run["requests"]
        callgrind_control("dump", pid)
        (dump,) = outdir.glob("cg.*.1")
        counted = callgrind_total(dump)
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
            jobs = {
                f: pool.submit(instructions_per_request, f, url, requests, python=PYTHONS.get(f))
                for f in batch
            }
            counts.update({f: job.result() for f, job in jobs.items()})
    setup = (
        f"wrk -t1 -c{HTTP_CONNECTIONS}, {CALLGRIND_CLIENTS} client IPs round robin, every "
        f"server warmed {CALLGRIND_WARMUP_S} s then counted {CALLGRIND_SECONDS} s; the "
        "server's instructions only (not redis-server's)"
    )
    peers = (
        ("unlimited", "same route, no limiter", "the same app, RATE_LIMIT_ENABLED=false"),
        ("slowapi", "slowapi", "slowapi moving window on limits' sync storage, redis-py 7"),
    )
    for factory, peer, peer_setup in peers:
        result.add(
            Row(
                f"server instructions per request, our middleware vs {FACTORIES[factory]}"
                " (callgrind, live uvicorn)",
                counts["ours"],
                counts[factory],
                peer,
                unit="instr",
                higher_is_better=False,
                setup=f"{setup}; peer: {peer_setup}",
            )
        )
    result.extra["instructions_per_request"] = counts


def main() -> None:
    result = Result("ratelimit", "Rate limiting: decisions/s, memory per key, HTTP overhead")
    with redis_server() as server_:
        print(f"redis-server on {server_.port}")
        asyncio.run(decisions(result, server_.url))
        http(result, server_)
        notes(result)
        # Written before the callgrind stage too: on a loaded machine valgrind'd servers can
        # overrun the deadline, and the decisions and HTTP rows should not go with them.
        result.notes.append(
            "Instructions: not counted in this result (written before the callgrind stage, "
            "which had not finished)."
        )
        result.write()
        result.notes.pop()
        instructions(result, server_.url)
    result.write()


def notes(result: Result) -> None:
    versions = PEER_VERSIONS
    result.notes += [
        f"Decisions: 1 and {CONCURRENCY} concurrent callers in one process, {IDENTITIES:,} "
        f"identities round robin, {POLICY}: nobody reaches the limit, so every decision is a "
        f"Redis script call. Every side warmed {WARMUP_SECONDS} s first, then {ROUNDS} rounds "
        f"of {SECONDS / ROUNDS:.2f} s per side, the order reversed every round; the figure is "
        f"the mean of the rounds (each round's rates in the JSON). `limits` "
        f"{versions.get('limits', '?')} runs in a venv of its own (bench/peers/"
        f"limits-requirements.txt, built by `make bench`) on the clients it declares: "
        f"coredis {versions.get('coredis', '?')} (the default of its async RedisStorage, as "
        f"its documentation sets it up) and redis-py {versions.get('redis', '?')} "
        "(implementation=redispy); ours and the raw EVALSHA on the project's redis-py 8.",
        f"HTTP: uvicorn, 1 worker, uvloop/httptools as installed, wrk -t1 -c{HTTP_CONNECTIONS} "
        "from a separate process; 5,000 forwarded client IPs; "
        f"{HTTP_ROUNDS} rounds, each timing the unlimited route, ours and slowapi for "
        f"{HTTP_SECONDS} s after a 1 s warm-up, the order reversed round by round, every "
        "server on an empty Redis. The server runs on core 1 alone while redis-server shares "
        "wrk's core 0, so req/s and 'server CPU' do not charge the limiter for Redis's CPU; "
        "the 'server + redis-server CPU' rows do (Redis's CPU during the run, per request "
        "served). slowapi runs on the peers' venv (limits on redis-py it declares).",
        f"Instructions: {CALLGRIND_CLIENTS} client IPs, each server under valgrind "
        f"--tool=callgrind, counted over {CALLGRIND_SECONDS} s of wrk load after "
        f"{CALLGRIND_WARMUP_S} s of warm-up, divided by the requests served: repeatable, and "
        "blind to what the rest of the machine does (it counts work, not time; kernel time "
        "and redis-server are not in it).",
    ]


if __name__ == "__main__":
    main()

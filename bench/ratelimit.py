"""Rate limiting: decisions/s of one process and HTTP req/s of one route, next to the peers.

One run on one private redis-server:
* decisions per second of one asyncio process (64 concurrent callers, 10,000 identities, a
  limit nobody reaches so every decision goes to Redis): our sliding log and our GCRA through
  the store (auto-pipelined), `limits` moving window and fixed window (async redis-py
  storage), and our script sent with raw redis-py EVALSHA (no store, no pipelining);
* memory per key (MEMORY USAGE) of each algorithm at a full window of 10, 100 and 1000;
* HTTP requests/s of one route under uvicorn (1 worker, same flags) with our middleware,
  without it, and under slowapi, from wrk in a separate process (bounded in time).
Targets (the issue): >= 3x `limits`' moving window; the limited route >= 0.8x the unlimited.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis.asyncio
from limits import parse as parse_limit
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from common import ROOT, Result, Row, measure_rate, redis_server
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
HTTP_ROUNDS = 3
HTTP_CONNECTIONS = 32


# --- decisions ------------------------------------------------------------------------------


async def decisions(result: Result, url: str) -> None:
    settings = load_settings(env_file=None, redis_url=url, redis_key_prefix="bench:")
    store = build_store(settings)
    await store.start()
    limiter = RateLimiter(store, KeySpace("bench:"), blocked_max=0)
    idents = [
        identity_token("ip", f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        for n in range(IDENTITIES)
    ]
    rates: dict[str, float] = {}
    for algorithm, policy in (("sliding log", POLICY), ("GCRA", POLICY + ":gcra")):
        (limit,) = named_limits("bench-" + algorithm.split()[0].lower(), policy)
        checks = [limiter.check_for(limit, who) for who in idents]

        async def decide(i: int, checks=checks) -> None:
            decision = await limiter.decide([checks[i % IDENTITIES]])
            assert decision.allowed

        rates[algorithm] = await measure_rate(decide, concurrency=CONCURRENCY, seconds=SECONDS)

    raw = redis.asyncio.Redis.from_url(url, max_connections=CONCURRENCY)
    sha = await raw.script_load(DECIDE_LUA)
    assert sha == script_sha(DECIDE_LUA)
    raw_keys = [f"bench:raw:{{{who}}}" for who in idents]

    async def raw_evalsha(i: int) -> None:
        await raw.evalsha(sha, 1, raw_keys[i % IDENTITIES], 1, "l", 1000, 60_000)

    rates["raw"] = await measure_rate(raw_evalsha, concurrency=CONCURRENCY, seconds=SECONDS)

    storage = RedisStorage(f"async+{url}", implementation="redispy")
    item = parse_limit(POLICY)
    for name, strategy in (
        ("moving", MovingWindowRateLimiter(storage)),
        ("fixed", FixedWindowRateLimiter(storage)),
    ):

        async def hit(i: int, strategy=strategy, name=name) -> None:
            assert await strategy.hit(item, f"bench-{name}", str(i % IDENTITIES))

        rates[name] = await measure_rate(hit, concurrency=CONCURRENCY, seconds=SECONDS)

    peer_moving = "limits moving window, async redis-py"
    result.add(
        Row(
            "decisions/s, sliding log (exact), one process",
            rates["sliding log"],
            rates["moving"],
            peer_moving,
        )
    )
    result.add(Row("decisions/s, GCRA, one process", rates["GCRA"], rates["moving"], peer_moving))
    result.add(
        Row(
            "decisions/s, sliding log vs limits fixed window (inexact)",
            rates["sliding log"],
            rates["fixed"],
            "limits fixed window, async redis-py",
        )
    )
    result.add(
        Row(
            "decisions/s, sliding log through the store vs raw EVALSHA",
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


@contextlib.contextmanager
def server(factory: str, url: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="upak-bench-rl-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "UPAK_", "RATE_"))}
    env.update(
        REDIS_URL=url,
        REDIS_KEY_PREFIX=f"http-{factory}:",
        RATE_LIMIT_DEFAULT=POLICY,
        TRUSTED_PROXIES="127.0.0.1",
        DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/upak.db",
        LOG_LEVEL="WARNING",
        PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'src'}",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"bench.peers.ratelimit_apps:{factory}",
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
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{factory} server exited: {proc.stderr.read().decode()[-2000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/items", timeout=0.5).status_code == 200:
                    break
            time.sleep(0.05)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(base: str, requests_file: Path, seconds: float) -> dict[str, float]:
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
    ).stdout
    import json

    data = json.loads(re.search(r"WRKJSON (\{.*\})", output).group(1))  # type: ignore[union-attr]
    statuses = {int(k): v for k, v in data["status"].items()}
    return {
        "rps": data["requests"] / (data["duration_us"] / 1e6),
        "p99_ms": data["p99_us"] / 1000,
        "ok": statuses.get(200, 0) / max(1, data["requests"]),
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http(result: Result, url: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="upak-bench-rl-"))
    requests_file = workdir / "items.txt"
    with requests_file.open("w") as out:
        # 5,000 clients behind one trusted proxy; nobody reaches the limit in the run.
        for n in range(5000):
            out.write(f"GET\x1e/items\x1eX-Forwarded-For: 10.1.{n // 256}.{n % 256}\x1e\n")
    runs: dict[str, list[dict[str, float]]] = {}
    # Ours and unlimited interleaved, three rounds each: the machine is shared and drifts.
    for factory in ("unlimited", "ours") * HTTP_ROUNDS + ("slowapi",):
        with server(factory, url) as (base, pid):
            wrk(base, requests_file, 1)  # warm-up: connections, scripts, caches
            cpu_before = _cpu_seconds(pid)
            run = wrk(base, requests_file, HTTP_SECONDS)
            run["cpu_us"] = (_cpu_seconds(pid) - cpu_before) * 1e6 / (run["rps"] * HTTP_SECONDS)
        runs.setdefault(factory, []).append(run)
        print(
            f"    {factory:<10} {run['rps']:>9,.0f} req/s  p99 {run['p99_ms']:5.1f} ms  "
            f"server CPU {run['cpu_us']:6.1f} us/req  200s {run['ok']:.1%}"
        )
    med = {f: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for f, rs in runs.items()}
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
            "server CPU us per request, with our middleware vs without (median)",
            med["ours"]["cpu_us"],
            med["unlimited"]["cpu_us"],
            "same route, no limiter",
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
    result.add(
        Row(
            "HTTP p99 ms, GET /items with our middleware vs slowapi",
            med["ours"]["p99_ms"],
            med["slowapi"]["p99_ms"],
            "slowapi moving window",
            unit="ms",
            higher_is_better=False,
        )
    )
    result.extra["http_runs"] = runs


def main() -> None:
    result = Result("ratelimit", "Rate limiting: decisions/s, memory per key, HTTP overhead")
    with redis_server() as server_:
        print(f"redis-server on {server_.port}")
        asyncio.run(decisions(result, server_.url))
        http(result, server_.url)
    result.notes += [
        f"{CONCURRENCY} concurrent callers in one process, {IDENTITIES} identities, "
        f"{POLICY}: nobody reaches the limit, so every decision is a Redis script call.",
        "HTTP: uvicorn, 1 worker, uvloop/httptools as installed, wrk -t1 -c"
        f"{HTTP_CONNECTIONS} from a separate process; 5,000 forwarded client IPs.",
        "The machine has 2 cores shared by wrk, uvicorn, redis-server and other work: "
        "compare ratios within the run, not absolute figures across runs.",
    ]
    result.write()


if __name__ == "__main__":
    main()

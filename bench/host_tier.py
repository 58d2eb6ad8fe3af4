"""The host tier (issue 14): what the service answers with 4 workers while Redis is away, next
to the same service with Redis up, in the same run; what the tier costs while Redis is up; and
how many bytes a record takes in the shared file.

One run on one private redis-server:
* outage vs Redis up: `upak serve --workers 4` (bench/peers/host_service.py), its host tier on
  tmpfs, wrk driving logged-in GET /me and GET /auth/sessions, and anonymous GET /plans from
  5,000 client addresses; every request is one rate-limit decision (the default limit, far
  above what the run sends). Paired rounds, the order alternating (up then away, away then
  up, ...); between them Redis is killed -9 (after a SAVE) or started again, and the next
  round waits until /health says every worker is on the expected store. The issue's bar:
  outage >= 0.5x Redis up.
* the tier's Redis-up cost: one uvicorn process of the app with UPAK_FALLBACK_PATH (the tier
  as its fallback: the session mirror written there, memoised 5 s per session) next to one
  without it (the mirror in process memory), paired rounds of logged-in GET /me with 16 and
  with 1,600 sessions. With several workers the settings always use the tier, so the single
  process is the comparison that changes one thing only.
* bytes per record, read from the tier (`HostTier.used(namespace)` / records written) next
  to Redis's MEMORY USAGE of the same records, and the tier file's size per record.
A counted run where fewer than 99% of the answers are 200 is refused, not reported.

`bench/host_tier.py --docs` rewrites the host-tier section of docs/BENCHMARKS.md from the
last result (bench/results/host_tier.json) in bench/report.py's layout, and nothing else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import redis

from common import RESULTS, ROOT, RedisServer, Result, Row, redis_server
from peers.host_service import QUICK_FAILOVER_ENV, pin_process, served
from ratelimit import HTTP_CONNECTIONS, LOAD_CPUS, SERVER_CPUS, paired_wrk, wrk
from ratelimit import server as uvicorn_server
from report import fmt
from upak.config import load_settings
from upak.features.ratelimit import RateLimiter, identity_token, named_limits
from upak.features.replay import ReplayGuard, ReplayWindows
from upak.features.sessions import RESOLVE, SessionManager, Use
from upak.store import KeySpace, build_store
from upak.store.host import MAIN, RATELIMIT, HostStore, HostTier, encode

TITLE = "Host tier: 4 workers through a Redis outage, the tier's Redis-up cost, bytes per record"
MODULE = "bench.peers.request_path_apps"  # `ours` there is the app `upak serve` runs
PREFIX = "host-bench:"
PASSWORD = "host-tier-bench-1"
WORKERS = 4
ACCOUNTS = 16
SESSIONS_PER_ACCOUNT = 100  # the wide distribution: MAX_SESSIONS_PER_USER sessions each
CLIENTS = 5_000  # anonymous client addresses behind the trusted proxy, for /plans
# GCRA: one timestamp per key. A sliding log with a limit nobody reaches would hold every
# admission of the last minute, thousands per logged-in user at these rates: a row no real
# limit lets grow (the default 120/minute caps it at 120), rewritten by every decision.
UNREACHED = "10000000/minute:gcra"
ROUNDS = 4  # outage/up pairs
PAIRS = 4  # tier/no-tier pairs per session distribution
SECONDS = 3
WARMUP_SECONDS = 1
RECORDS = 500
BAR = 0.5  # the issue's: outage throughput >= 0.5x Redis up


def tmpfs_dir() -> Path:
    """A private directory on tmpfs for the tiers (as the service's default is), else /tmp."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="upak-bench-tier-", dir=shm if shm.is_dir() else None))


# The service's database: a throwaway PostgreSQL cluster (production's database) when its
# binaries are here, else a SQLite file. Set by `main`.
DATABASE: dict[str, str] = {}


def service_env(workdir: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": DATABASE.get("url", f"sqlite+aiosqlite:///{workdir}/upak.db"),
        "REDIS_KEY_PREFIX": PREFIX,
        "RATE_LIMIT_DEFAULT": UNREACHED,
        "RATE_LIMIT_LOGIN": UNREACHED,
        "RATE_LIMIT_LOGIN_IP": UNREACHED,
        "RATE_LIMIT_REGISTER": UNREACHED,
        "TRUSTED_PROXIES": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
    }


# --- the logged-in users and the request files ---


def sign_up(base: str, names: range) -> list[tuple[int, str]]:
    """One account per name, registered and logged in once: (user id, session cookie)."""

    def account(n: int) -> tuple[int, str]:
        email = f"host-bench-{n}@example.com"
        with httpx.Client(base_url=base, timeout=30) as client:
            client.post("/auth/register", json={"email": email, "password": PASSWORD})
            response = client.post("/auth/login", json={"email": email, "password": PASSWORD})
            response.raise_for_status()
            return int(response.json()["id"]), client.cookies["upak_session"]

    # Two at a time: Argon2 is most of it, and the server hashes off its event loop.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return list(pool.map(account, names))


async def more_sessions(url: str, accounts: list[tuple[int, str]]) -> list[str]:
    """Fill every account up to SESSIONS_PER_ACCOUNT sessions, as logins would (the same
    create operation), without 1,584 more Argon2 hashes: every cookie, the logins' first."""
    settings = load_settings(env_file=None, redis_url=url, redis_key_prefix=PREFIX)
    store = build_store(settings)
    await store.start()
    manager = SessionManager(
        store,
        KeySpace(PREFIX),
        idle_timeout=settings.session_idle_timeout,
        max_age=settings.session_max_age,
    )
    cookies = [cookie for _, cookie in accounts]
    for _ in range(SESSIONS_PER_ACCOUNT - 1):
        for user_id, _ in accounts:
            issued = await manager.create(user_id, "127.0.0.1", "wrk")
            cookies.append(issued.cookie_value)
    await store.close()
    return cookies


def request_file(workdir: Path, name: str, lines: list[str]) -> Path:
    path = workdir / f"{name}.txt"
    path.write_text("".join(lines))
    return path


def logged_in_requests(workdir: Path, route: str, cookies: list[str]) -> Path:
    return request_file(
        workdir,
        f"{route.strip('/').replace('/', '-')}-{len(cookies)}",
        [f"GET\x1e{route}\x1eCookie: upak_session={c}\x1e\n" for c in cookies],
    )


def plans_requests(workdir: Path) -> Path:
    return request_file(
        workdir,
        "plans",
        [
            f"GET\x1e/plans\x1eX-Forwarded-For: 10.2.{n // 256}.{n % 256}\x1e\n"
            for n in range(CLIENTS)
        ],
    )


def counted(label: str, base: str, requests: Path) -> dict[str, float]:
    """One counted wrk run; refused when fewer than 99% of its answers were 200."""
    run = wrk(base, requests, SECONDS, LOAD_CPUS)
    if run["ok"] < 0.99:
        raise RuntimeError(f"{label}: only {run['ok']:.1%} answered 200; not reported")
    return run


# --- the tier's cost while Redis is up: one process with it, one without ---


def redis_up_cost(
    result: Result, redis_url: str, workdir: Path, tiers: Path, files: dict[str, Path]
) -> None:
    env = service_env(workdir)
    launch = {"prefix": PREFIX, "module": MODULE, "probe": "/plans"}
    with (
        uvicorn_server("ours", redis_url, env_extra=env, **launch) as (plain_url, plain_pid),
        uvicorn_server(
            "ours", redis_url, env_extra={**env, "UPAK_FALLBACK_PATH": str(tiers / "one")}, **launch
        ) as (tier_url, tier_pid),
    ):
        for pid in (plain_pid, tier_pid):
            pin_process(pid, SERVER_CPUS)
        urls = {"plain": plain_url, "tier": tier_url}  # peer first: ratios are tier / plain
        for name in ("me 16", "me 1600"):
            sessions = f"{int(name.split()[1]):,}"
            for url in urls.values():
                wrk(url, files[name], WARMUP_SECONDS, LOAD_CPUS)
            runs, ratios = paired_wrk(urls, files[name], PAIRS, SECONDS, name)
            result.add(
                Row(
                    f"Redis up, 1 worker: logged-in GET /me, {sessions} sessions, with the "
                    "host tier as fallback vs without (req/s)",
                    statistics.median(runs["tier"]),
                    statistics.median(runs["plain"]),
                    "same app, no tier (mirror in process memory)",
                    unit="req/s",
                )
            )
            result.add(
                Row(
                    f"Redis up, 1 worker, GET /me, {sessions} sessions: with tier / without, "
                    f"median of {PAIRS} paired rounds",
                    statistics.median(ratios),
                    unit="x",
                )
            )
            result.extra[f"redis_up_cost {name}"] = {"runs": runs, "paired_ratios": ratios}
    result.extra["single_process_tier_rows"] = largest_rows(tiers / "one")


def largest_rows(root: Path, top: int = 3) -> dict[str, object]:
    """The tier's row count and its biggest rows (key shape, bytes): what a mirror write
    rewrites. Read-only, after the servers stopped; keys are shown without their ids."""
    (path,) = root.glob("*.sqlite")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        (rows,) = db.execute("SELECT count(*) FROM kv").fetchone()
        biggest = db.execute(
            "SELECT key, length(value) FROM kv ORDER BY length(value) DESC LIMIT ?", (top,)
        ).fetchall()
    return {
        "rows": rows,
        "biggest": [
            (key.split("{", 1)[0] + ("{...}" if "{" in key else ""), size) for key, size in biggest
        ],
    }


# --- outage vs Redis up, 4 workers ---

# route key -> (its request file, its label)
ROUTES = {
    "me 16": ("me 16", "logged-in GET /me (cached per host while away)"),
    "sessions": ("sessions", "logged-in GET /auth/sessions (no database)"),
    "plans": ("plans", "anonymous GET /plans (decided by client address)"),
}
# The same /me on a service that says it has two hosts: caching is off while Redis is away
# (another host's invalidation could not reach this tier), so every /me reads the database.
SEVERAL_HOSTS = {
    "me several hosts": (
        "me 16",
        "logged-in GET /me, RATE_LIMIT_FALLBACK_DIVISOR=2 (several hosts: caching off while "
        "away, every /me reads the database)",
    ),
}


def outage_rounds(
    result: Result,
    server: RedisServer,
    workdir: Path,
    tiers: Path,
    files: dict[str, Path],
    cookies: list[str],
    *,
    routes: dict[str, tuple[str, str]] = ROUTES,
    env_extra: dict[str, str] | None = None,
    tier: str = "workers",
) -> None:
    env = {
        **service_env(workdir),
        **QUICK_FAILOVER_ENV,
        "UPAK_FALLBACK_PATH": str(tiers / tier),
        **(env_extra or {}),
    }
    with served(server, env, workers=WORKERS, server_cpus=SERVER_CPUS, load_cpus=LOAD_CPUS) as host:
        for cookie in cookies:  # each session used once while Redis is up: mirrored
            with httpx.Client(base_url=host.url, timeout=10) as client:
                client.get("/me", headers={"Cookie": f"upak_session={cookie}"}).raise_for_status()
        runs: dict[str, dict[str, list[dict[str, float]]]] = {
            route: {"up": [], "away": []} for route in routes
        }
        switches: dict[str, list[float]] = {"to memory": [], "to redis": []}
        state = "up"
        for n in range(ROUNDS):
            for side in ("up", "away") if n % 2 == 0 else ("away", "up"):
                if side != state:
                    if side == "away":
                        switches["to memory"].append(host.redis_away())
                    else:
                        switches["to redis"].append(host.redis_back())
                    state = side
                for route, (file, _) in routes.items():
                    wrk(host.url, files[file], WARMUP_SECONDS, LOAD_CPUS)
                    runs[route][side].append(counted(f"{side} {route}", host.url, files[file]))
                print(
                    f"    round {n} {side:<4} "
                    + "  ".join(
                        f"{route}: {runs[route][side][-1]['rps']:,.0f} req/s" for route in routes
                    )
                )
        if state != "up":
            switches["to redis"].append(host.redis_back())
        log = host.service.log()
    outage_rows(result, runs, routes)
    result.extra[f"outage_switch_seconds {tier}"] = switches
    result.extra[f"outage_runs {tier}"] = runs
    # A call that could not lock the tier in time was served from that worker's memory.
    result.extra[f"tier_lock_misses_logged {tier}"] = log.count("host tier busy past")
    result.extra[f"tracebacks_in_service_log {tier}"] = log.count("Traceback")
    if "Traceback" in log:
        raise RuntimeError("the service logged a traceback:\n" + log[-3000:])


def outage_rows(
    result: Result,
    runs: dict[str, dict[str, list[dict[str, float]]]],
    routes: dict[str, tuple[str, str]],
) -> None:
    for route, (_, label) in routes.items():
        up = [run["rps"] for run in runs[route]["up"]]
        away = [run["rps"] for run in runs[route]["away"]]
        ratios = [a / u for a, u in zip(away, up, strict=True)]
        result.add(
            Row(
                f"{WORKERS} workers, Redis away (host tier): {label}, req/s",
                statistics.median(away),
                statistics.median(up),
                "same service, Redis up",
                unit="req/s",
            )
        )
        ratio = result.add(
            Row(
                f"{WORKERS} workers, {label}: Redis away / Redis up, median of {ROUNDS} "
                f"paired rounds (bar: {BAR}x)",
                statistics.median(ratios),
                unit="x",
            )
        )
        result.extra[f"outage_paired_ratios {route}"] = ratios
        result.extra[f"outage_bar_met {route}"] = ratio.ours >= BAR
        for side, name in (("away", "Redis away"), ("up", "Redis up")):
            result.extra[f"p99_ms {route} {name}"] = statistics.median(
                run["p99_ms"] for run in runs[route][side]
            )


# --- bytes per record ---


def tier_file_bytes(tier: HostTier) -> int:
    """The tier's bytes on tmpfs: its database file, once the WAL is folded into it."""
    tier.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return tier.path.stat().st_size


def redis_bytes(client: redis.Redis, pattern: str) -> int:
    return sum(
        client.memory_usage(key, samples=0) or 0 for key in client.scan_iter(pattern, count=1000)
    )


async def bytes_per_record(result: Result, tiers: Path) -> None:
    """Each kind of record written RECORDS times, on Redis (MEMORY USAGE) and into a tier of
    its own (its `used` bytes, and its file), the same keys and values on both."""
    with redis_server() as server:
        client = server.client()
        settings = load_settings(
            env_file=None, redis_url=server.url, upak_fallback_path=str(tiers / "sessions")
        )
        store = build_store(settings)  # Redis up, the host tier as its fallback
        await store.start()
        assert isinstance(store.memory, HostStore)
        sizes: dict[str, dict[str, float]] = {}

        # A logged-in user's session: created on Redis, mirrored into the tier (one session
        # per user, so each carries its whole index).
        keys = KeySpace(settings.redis_key_prefix)
        manager = SessionManager(store, keys, idle_timeout=86_400, max_age=30 * 86_400)
        empty = tier_file_bytes(store.memory.tier)
        for user in range(RECORDS):
            await manager.create(user + 1, "203.0.113.7", "Mozilla/5.0 (X11; Linux x86_64)")
        sizes["mirrored session (its hash and its user's index)"] = {
            "tier": store.memory.tier.used(MAIN) / RECORDS,
            "file": (tier_file_bytes(store.memory.tier) - empty) / RECORDS,
            "redis": redis_bytes(client, keys.pattern("sessions")) / RECORDS,
        }

        async def both(
            kind: str,
            namespace: str,
            write: Callable[[object, KeySpace, int], object],
            records: int = RECORDS,
        ) -> None:
            tier = HostTier(tiers / f"kind-{len(sizes)}", "t")
            host = HostStore(tier)
            kind_keys = KeySpace(f"b{len(sizes)}:")
            empty = tier_file_bytes(tier)
            for record in range(records):
                await write(store, kind_keys, record)  # on Redis, through the FailoverStore
                await write(host, kind_keys, record)  # into the tier, as during an outage
            sizes[kind] = {
                "tier": tier.used(namespace) / records,
                "file": (tier_file_bytes(tier) - empty) / records,
                "redis": redis_bytes(client, f"{kind_keys.prefix}*") / records,
            }
            await host.close()

        def limit_writer(policy: str, hits: int) -> Callable[[object, KeySpace, int], object]:
            (limit,) = named_limits("default", policy)

            async def write(target, kind_keys: KeySpace, record: int) -> None:
                limiter = RateLimiter(target, kind_keys)
                check = limiter.check_for(limit, identity_token("ip", f"10.3.{record}.1"))
                for _ in range(hits):
                    assert (await limiter.decide([check])).allowed

            return write

        await both(
            "rate-limit counter, sliding log, 1 admission",
            RATELIMIT,
            limit_writer("120/minute", 1),
        )
        await both(
            "rate-limit counter, sliding log, 120 admissions (120/minute, full)",
            RATELIMIT,
            limit_writer("120/minute", 120),
            records=RECORDS // 5,
        )
        await both("rate-limit counter, GCRA", RATELIMIT, limit_writer("120/minute:gcra", 1))

        async def claim(target, kind_keys: KeySpace, record: int) -> None:
            guard = ReplayGuard(target, kind_keys, ReplayWindows.from_settings(settings))
            await guard.claim("upak", f"delivery-{record}")

        async def processed(target, kind_keys: KeySpace, record: int) -> None:
            guard = ReplayGuard(target, kind_keys, ReplayWindows.from_settings(settings))
            await guard.finish(await guard.claim("upak", f"delivery-{record}"))

        await both("replay claim, in flight", MAIN, claim)
        await both("replay claim, processed (the done marker)", MAIN, processed)
        await store.close()
    for kind, size in sizes.items():
        result.add(
            Row(
                f"host tier: bytes per {kind}",
                size["tier"],
                size["redis"],
                "Redis MEMORY USAGE, same record",
                unit="bytes",
                higher_is_better=False,
            )
        )
    result.extra["bytes_per_record"] = sizes


# --- what one mirror write costs, by how many sessions the host has mirrored ---

MIRRORED = (ACCOUNTS, ACCOUNTS * SESSIONS_PER_ACCOUNT)
MIRROR_WRITES = 300


def mirror_write_us(root: Path, mirrored: int) -> tuple[float, int]:
    """Microseconds per session-mirror write into a tier already mirroring `mirrored`
    sessions, spread over users as the wrk rounds' are (16: one per user; 1,600: 100 per
    user, MAX_SESSIONS_PER_USER), the memo off so each call writes, each write a second
    later than the last (the session was seen again: its idle expiry moves on); and the
    registry row's bytes. This is what FailoverStore does after each Redis resolve that
    the memo does not skip."""
    store = HostStore(HostTier(root, "t"), remember_interval=0)
    keys = KeySpace("m:")
    start = int(time.time() * 1000)
    handles = [f"{n:032x}" for n in range(mirrored)]
    per_user = max(1, mirrored // ACCOUNTS)

    def mirror(n: int, now: int) -> None:
        user = f"u{n // per_user}"
        session = [
            keys.tagged("sessions", user, "s", handles[n]),
            keys.tagged("sessions", user, "index"),
        ]
        reply = [str(start).encode(), str(now).encode(), str(start + 86_400_000).encode()]
        store.remember(RESOLVE, session, Use(handles[n], now, 3_600_000), [*reply, b"", b""])

    for n in range(mirrored):
        mirror(n, start)
    began = time.perf_counter()
    for n in range(MIRROR_WRITES):
        mirror(n % mirrored, start + 1_000 * (n + 1))
    spent = (time.perf_counter() - began) / MIRROR_WRITES
    registry = store.tier.load(keys.key("sessions", "mirror"))
    size = len(encode(*registry)) if registry else 0
    store.tier.close()
    return spent * 1e6, size


def mirror_write_cost(result: Result, tiers: Path) -> None:
    costs = {n: mirror_write_us(tiers / f"mirror-{n}", n) for n in MIRRORED}
    few, many = MIRRORED
    result.add(
        Row(
            f"host tier, in-process: us per session-mirror write, {many:,} sessions mirrored "
            f"({many // ACCOUNTS} per user) vs {few} (1 per user)",
            costs[many][0],
            costs[few][0],
            f"{few} sessions mirrored",
            unit="us",
            higher_is_better=False,
        )
    )
    result.extra["mirror_write"] = {
        str(n): {"us": us, "registry_row_bytes": size} for n, (us, size) in costs.items()
    }


# --- the section of docs/BENCHMARKS.md ---


def section(data: dict) -> list[str]:
    """This result's section, in bench/report.py's layout (table, then the notes), opened by
    the line saying when and how it was measured (the page's header is of `make bench`)."""
    extra = data.get("extra", {})
    lines = [f"## {data['title']}", ""]
    if "measured_utc" in extra:
        lines += [
            f"Measured on {extra['measured_utc']} by `bench/host_tier.py` alone, in "
            f"{extra['seconds']:.0f} s; the 1-minute load average when it started: "
            f"{extra.get('load_before', 'not recorded')} (2 cores).",
            "",
        ]
    lines.append("| measure | ours | peer | peer figure | ratio |")
    lines.append("|---|---:|---|---:|---:|")
    for row in data["rows"]:
        ratio = f"{row['ratio']:.2f}x" if row.get("ratio") is not None else ""
        lines.append(
            f"| {row['metric']} | {fmt(row['ours'])} {row['unit']} | "
            f"{row.get('peer_name') or ''} | {fmt(row.get('peer'))} | {ratio} |"
        )
    lines.append("")
    lines += [f"- {note}" for note in data.get("notes", [])]
    return [*lines, ""] if data.get("notes") else lines


def write_docs_section() -> Path:
    """Replace (or add, where bench/report.py puts a result it has no place for: after the
    others) the host-tier section of docs/BENCHMARKS.md; no other section is touched."""
    data = json.loads((RESULTS / "host_tier.json").read_text())
    path = ROOT / "docs" / "BENCHMARKS.md"
    lines = path.read_text().split("\n")
    heading = f"## {data['title']}"
    new = section(data)
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    if heading in lines:
        at = lines.index(heading)
        end = next((i for i in starts if i > at), len(lines))
        lines[at:end] = new
    else:
        tail = "## Benches that did not produce figures"
        at = lines.index(tail) if tail in lines else len(lines)
        if at == len(lines) and lines and lines[-1] != "":
            new = ["", *new]
        lines[at:at] = new
    path.write_text("\n".join(lines))
    return path


# --- the run ---


@contextlib.contextmanager
def database() -> Iterator[str]:
    """PostgreSQL on the load core (as Redis is: both are services the workers call), else
    SQLite inside the workers; yields the note that says which."""
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres import postgres_bin, postgres_server

    if postgres_bin() is None:
        yield "database: SQLite (aiosqlite) in the workers' own processes; no PostgreSQL here"
        return
    with postgres_server() as pg:
        assert pg.proc is not None
        for pid in [pg.proc.pid, *_children(pg.proc.pid)]:
            pin_process(pid, LOAD_CPUS)
        DATABASE["url"] = pg.url()
        try:
            yield (
                "database: a throwaway PostgreSQL cluster (asyncpg), pinned with Redis and wrk "
                f"to CPU {LOAD_CPUS}: like Redis, a service the workers call"
            )
        finally:
            DATABASE.clear()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


LOAD_BEFORE = 0.0  # the 1-minute load average when the run started, for the report


def main() -> Result:
    global LOAD_BEFORE
    LOAD_BEFORE = os.getloadavg()[0]
    started = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - started - sum(phases.values()), 1)

    result = Result("host_tier", TITLE)
    # The request files hold live session cookies: both directories go at the end.
    workdir = Path(tempfile.mkdtemp(prefix="upak-bench-host-"))
    tiers = tmpfs_dir()
    try:
        with redis_server() as server, database() as db_note:
            result.notes.append(db_note)
            assert server.proc is not None
            pin_process(server.proc.pid, LOAD_CPUS)
            env = service_env(workdir)
            with uvicorn_server(
                "ours", server.url, prefix=PREFIX, module=MODULE, probe="/plans", env_extra=env
            ) as (base, _):
                hot = [cookie for _, cookie in sign_up(base, range(ACCOUNTS))]
                wide = sign_up(base, range(ACCOUNTS, 2 * ACCOUNTS))
            files = {
                "me 16": logged_in_requests(workdir, "/me", hot),
                "sessions": logged_in_requests(workdir, "/auth/sessions", hot),
                "me 1600": logged_in_requests(
                    workdir, "/me", asyncio.run(more_sessions(server.url, wide))
                ),
                "plans": plans_requests(workdir),
            }
            phase("accounts and sessions")
            redis_up_cost(result, server.url, workdir, tiers, files)
            phase("Redis-up cost, 1 worker")
            outage_rounds(result, server, workdir, tiers, files, hot)
            phase("outage vs Redis up, 4 workers")
            outage_rounds(
                result,
                server,
                workdir,
                tiers,
                files,
                hot,
                routes=SEVERAL_HOSTS,
                env_extra={"RATE_LIMIT_FALLBACK_DIVISOR": "2"},
                tier="several-hosts",
            )
            phase("outage vs Redis up, 4 workers, caching off (several hosts)")
        asyncio.run(bytes_per_record(result, tiers))
        mirror_write_cost(result, tiers)
        phase("bytes per record, mirror writes")
    finally:
        shutil.rmtree(tiers, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    result.notes += notes(result)
    result.extra["phase_seconds"] = phases
    result.extra["measured_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result.extra["load_before"] = round(LOAD_BEFORE, 2)
    result.extra["seconds"] = round(time.monotonic() - started, 1)
    result.write()
    return result


def notes(result: Result) -> list[str]:
    extra = result.extra
    wide = ACCOUNTS * SESSIONS_PER_ACCOUNT

    def ratio(route: str) -> float:
        return statistics.median(extra[f"outage_paired_ratios {route}"])

    registry = dict(extra["single_process_tier_rows"]["biggest"]).get(f"{PREFIX}sessions:mirror")
    files = "; ".join(
        f"{kind.split(' (')[0]}: {size['file']:,.0f}"
        for kind, size in extra["bytes_per_record"].items()
    )
    mirror = extra["mirror_write"]
    tier_rps = statistics.median(extra["redis_up_cost me 1600"]["runs"]["tier"])
    comes_round = wide / tier_rps
    # The memo skips a session's mirror for 5 s after writing it, then the next visit writes.
    rewrites = 1.0 if comes_round >= 5 else 1 / math.ceil(5 / comes_round)
    return [
        f"Outage vs Redis up: `upak serve --workers {WORKERS}` (the database named above, a "
        "private redis-server, QUICK_FAILOVER_ENV: 0.2 s socket timeouts, 0.1 s heartbeat), its "
        f"host tier in a private directory on /dev/shm. {ROUNDS} paired rounds, the order "
        "alternating (up then away, away then up, ...); between sides Redis is SAVEd and "
        "killed -9, or started from that snapshot (as a persistent Redis restarts), and the "
        "next side waits until each of the 4 worker pids has said `memory` or `redis` on "
        "/health (switch times in the JSON). Every side: per route a "
        f"{WARMUP_SECONDS} s wrk warm-up, then {SECONDS} s counted. The req/s row is each "
        "side's median, the x row the median of the rounds' ratios (the issue's bar: "
        f"outage >= {BAR}x).",
        f"Load: wrk -t1 -c{HTTP_CONNECTIONS}, one URL per route. Logged-in routes: "
        f"{ACCOUNTS} accounts, one session each (logged in over HTTP), cookies round robin. "
        "GET /me is a cache hit while Redis is up; while it is away it is a cache hit in the "
        "host tier (the service is one host, RATE_LIMIT_FALLBACK_DIVISOR unset: the workers "
        "cache per host, see the README's 'When Redis is away'). The same /me on a service "
        "told it has two hosts (RATE_LIMIT_FALLBACK_DIVISOR=2, its own service and tier, "
        "the same rounds) has caching off while Redis is away, so every /me there reads the "
        f"database (SQLAlchemy): away/up {ratio('me several hosts'):.2f}x, the seed's "
        "meaning, against one host's "
        f"{ratio('me 16'):.2f}x. GET /auth/sessions resolves the session and lists the "
        "user's sessions from the store, no database, no cache: away/up "
        f"{ratio('sessions'):.2f}x. GET /plans: anonymous, "
        f"{CLIENTS:,} client addresses (X-Forwarded-For from the trusted 127.0.0.1) round "
        "robin, one cached body (per host while away). Rate-limit decisions: every request of "
        "every route is one decision of the default limit (by user when logged in, else by "
        f"client address), RATE_LIMIT_DEFAULT={UNREACHED}, which the run never reaches: a "
        "decision, never a refusal. GCRA because a sliding log under a limit nobody reaches "
        "keeps every admission of the minute, thousands per user here, a row no real limit "
        "lets grow.",
        "Redis-up cost of the tier: the app `upak serve` runs, 1 uvicorn worker, with "
        "UPAK_FALLBACK_PATH on tmpfs vs without it (process memory), same Redis, database "
        f"and sessions; {PAIRS} paired rounds of {SECONDS} s per distribution after a "
        f"{WARMUP_SECONDS} s warm-up of each, the order alternating. With several workers "
        "the settings always use the tier, so one process is the comparison that changes "
        "one thing. Only sessions write to the fallback while Redis is up (the mirror; "
        "rate limits and the cache do not), so /me is measured: with the "
        f"{ACCOUNTS} sessions above (each mirror rewritten at most once per 5 s, the memo) "
        f"and with {wide:,} sessions ({SESSIONS_PER_ACCOUNT} on each of {ACCOUNTS} other "
        "accounts, made in-process with the login's create operation), round robin: at the "
        f"tier side's rate a session came round every {comes_round:.1f} s, so about "
        f"{rewrites:.0%} of those requests rewrote their mirror. The tier keeps no registry "
        "row of mirrored sessions (its byte budget bounds the mirror; `sessions:mirror` "
        f"held {registry or 0:,} bytes at the end of the {wide:,}-session rounds), so a "
        "mirror write rewrites the session, and the user's index only when its expiry must "
        "move (it is pushed 15 minutes past what its sessions need, so about once per 15 "
        "minutes per user): the in-process row times one such write with "
        f"{wide:,} sessions mirrored, {SESSIONS_PER_ACCOUNT} per user (registry row "
        f"{mirror[str(wide)]['registry_row_bytes']:,} bytes) and with {ACCOUNTS}, one per "
        f"user ({mirror[str(ACCOUNTS)]['registry_row_bytes']:,} bytes), each write a second "
        f"after the last, the memo off, {MIRROR_WRITES} writes.",
        "The 4 workers and their supervisor, and the single processes, pinned to core 1; "
        "wrk and redis-server to core 0: Redis's CPU is not charged to the Redis-up side, "
        "the tier's SQLite work is charged to the workers.",
        f"Bytes per record: {RECORDS} records of each kind ({RECORDS // 5} full sliding "
        "logs), the same keys on Redis and in a tier of their own; the tier's figure is "
        "what its byte budget counts (`HostTier.used`: key + encoded value). The tier "
        f"file on tmpfs per record (SQLite pages and indexes), bytes: {files}.",
        "Calls that found the tier locked past its 0.2 s deadline (served from that "
        "worker's own memory instead, or not cached) while the 4-worker services ran: "
        f"{extra['tier_lock_misses_logged workers']} with one host, "
        f"{extra['tier_lock_misses_logged several-hosts']} with two (from the workers' log).",
        "Compare ratios within the run, not absolute figures across runs: the machine's "
        "other work, if any, moves both sides of a pair alike.",
    ]


if __name__ == "__main__":
    if "--docs" in sys.argv:
        print(f"wrote {write_docs_section().relative_to(ROOT)}")
    else:
        main()

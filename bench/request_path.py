"""The request path: GET /plans and a logged-in GET /me, ours next to a bare FastAPI route.

One run on one private redis-server (issue 17's targets: /plans >= 0.8x and logged-in /me
>= 0.6x of bare FastAPI answering the same JSON, with the rate limiter, the session and the
cache all on):
* requests/s of each route, ours (bench/peers/request_path_apps.py:ours, the app `upak serve`
  runs, 1 uvicorn worker) and bare (the same bytes from a FastAPI route with no middleware),
  from wrk in a separate process; paired rounds, the order alternating round by round (bare
  first, then ours first), each pair's ratio taken and the median reported;
* the instructions each server executes per request under callgrind, on the live uvicorn:
  the figure the machine's noise cannot move, and the one each request-path change is
  measured by.
The session is created once (register, login) on the store and database both servers of
"ours" share, so every counted /me carries a live session cookie; a run where fewer than 99%
of the answers are 200 is refused rather than reported.
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import tempfile
from pathlib import Path

import httpx

from common import Result, Row, redis_server
from ratelimit import (
    HTTP_CONNECTIONS,
    LOAD_CPUS,
    SERVER_CPUS,
    instructions_per_request,
    paired_wrk,
    pin,
    wrk,
)
from ratelimit import server as uvicorn_server

MODULE = "bench.peers.request_path_apps"
PASSWORD = "request-path-bench-1"
EMAIL = "request-path@example.com"
ROUNDS = 5
SECONDS = 3
CALLGRIND_WARMUP_S = int(os.environ.get("CALLGRIND_WARMUP_S", 10))
CALLGRIND_SECONDS = int(os.environ.get("CALLGRIND_SECONDS", 20))
ROUTES = ("/plans", "/me")
# Far above what the run sends: this measures the limiter's cost, not its refusals.
UNREACHED = "10000000/minute:gcra"


def ours_env(workdir: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/upak.db",
        "REDIS_KEY_PREFIX": "request-path:",
        "RATE_LIMIT_DEFAULT": UNREACHED,
        "RATE_LIMIT_LOGIN": UNREACHED,
        "RATE_LIMIT_LOGIN_IP": UNREACHED,
        "RATE_LIMIT_REGISTER": UNREACHED,
    }


def log_in(base: str) -> tuple[str, dict[str, str]]:
    """A registered account's session cookie, and the JSON ours answers on each route."""
    with httpx.Client(base_url=base, timeout=30) as client:
        client.post("/auth/register", json={"email": EMAIL, "password": PASSWORD})
        client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD}).raise_for_status()
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        bodies = {}
        for route in ROUTES:
            response = client.get(route)
            response.raise_for_status()
            bodies[route] = response.text
    return cookie, bodies


def requests_files(workdir: Path, cookie: str) -> dict[str, Path]:
    """One wrk replay file per route; both carry the cookie (the bare route ignores it)."""
    files = {}
    for route in ROUTES:
        path = workdir / f"{route.strip('/')}.txt"
        path.write_text(f"GET\x1e{route}\x1eCookie: {cookie}\x1e\n")
        files[route] = path
    return files


def bare_env(bodies: dict[str, str]) -> dict[str, str]:
    return {"BARE_PLANS_JSON": bodies["/plans"], "BARE_ME_JSON": bodies["/me"]}


def paired_rounds(
    result: Result, redis_url: str, env: dict[str, dict[str, str]], files: dict[str, Path]
) -> None:
    with (
        uvicorn_server("ours", redis_url, module=MODULE, probe="/plans", env_extra=env["ours"]) as (
            ours_url,
            ours_pid,
        ),
        uvicorn_server("bare", redis_url, module=MODULE, probe="/plans", env_extra=env["bare"]) as (
            bare_url,
            bare_pid,
        ),
    ):
        for pid in (ours_pid, bare_pid):
            pin(pid, SERVER_CPUS)
        urls = {"bare": bare_url, "ours": ours_url}  # peer first: ratios are ours / bare
        for route, path in files.items():
            for url in urls.values():
                wrk(url, path, 1, LOAD_CPUS)  # warm-up, both sides
            runs, ratios = paired_wrk(urls, path, ROUNDS, SECONDS, route)
            result.add(
                Row(
                    f"GET {route} (session cookie): requests/s, {HTTP_CONNECTIONS} "
                    "connections, one URL",
                    statistics.median(runs["ours"]),
                    statistics.median(runs["bare"]),
                    "bare FastAPI, same JSON",
                    unit="req/s",
                )
            )
            result.extra[f"paired_ratios {route}"] = ratios
            result.extra[f"median_paired_ratio {route}"] = statistics.median(ratios)


def instructions(
    result: Result, redis_url: str, env: dict[str, dict[str, str]], files: dict[str, Path]
) -> None:
    counts: dict[str, float] = {}
    # Two at a time (two cores): under valgrind each server runs ~50x slower.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for route, path in files.items():
            jobs = {
                side: pool.submit(
                    instructions_per_request,
                    side,
                    redis_url,
                    path,
                    warmup=CALLGRIND_WARMUP_S,
                    seconds=CALLGRIND_SECONDS,
                    module=MODULE,
                    probe="/plans",
                    env_extra=env[side],
                )
                for side in ("ours", "bare")
            }
            for side, job in jobs.items():
                counts[f"{side} {route}"] = job.result()
            result.add(
                Row(
                    f"GET {route}: server instructions per request (callgrind, live uvicorn)",
                    counts[f"ours {route}"],
                    counts[f"bare {route}"],
                    "bare FastAPI, same JSON",
                    unit="instr",
                    higher_is_better=False,
                )
            )
    result.extra["instructions_per_request"] = counts


def main(*, wall_clock: bool = True) -> Result:
    result = Result("request_path", "The request path: /plans and logged-in /me vs bare FastAPI")
    workdir = Path(tempfile.mkdtemp(prefix="upak-bench-path-"))
    with redis_server() as redis:
        env = {"ours": ours_env(workdir)}
        with uvicorn_server(
            "ours", redis.url, module=MODULE, probe="/plans", env_extra=env["ours"]
        ) as (base, _):
            cookie, bodies = log_in(base)
        env["bare"] = bare_env(bodies)
        files = requests_files(workdir, cookie)
        pin(redis.proc.pid, LOAD_CPUS)
        if wall_clock:
            paired_rounds(result, redis.url, env, files)
        instructions(result, redis.url, env, files)
    result.notes += [
        "ours: the full app (rate limiter on with a limit nobody reaches, sessions, cache), "
        "1 uvicorn worker on SQLite and a private redis-server; bare: FastAPI answering "
        "the same bytes, 1 worker, no middleware. Both routes carry the account's session "
        "cookie: one client, one URL per route.",
        f"requests/s: wrk -t1 -c{HTTP_CONNECTIONS}; {ROUNDS} paired rounds of {SECONDS} s per "
        "route after a 1 s warm-up of each side, the order alternating; the figure is each "
        "side's median, the ratio in the JSON is the median of the rounds' ratios. The "
        "servers on core 1, wrk and redis-server on core 0 (ours' Redis work is not "
        "charged to it).",
        f"Instructions: each server under valgrind --tool=callgrind, counted over "
        f"{CALLGRIND_SECONDS} s of wrk load after {CALLGRIND_WARMUP_S} s of warm-up, divided "
        "by the requests served (kernel time and redis-server are not in it).",
    ]
    result.write()
    return result


if __name__ == "__main__":
    import sys

    main(wall_clock="--instructions-only" not in sys.argv)

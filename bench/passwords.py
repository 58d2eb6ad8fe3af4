"""Password hashing under a login flood: the bound on concurrent Argon2 hashes (issue 13, #4).

One `upak serve` (one worker, production Argon2id: t=3, m=64 MiB, p=4) is flooded with logins
for unknown emails (each costs a full hash) by FLOOD concurrent clients, while one user logs
in with the right password again and again. Two runs, same flood:

* bounded: the defaults, PASSWORD_HASH_CONCURRENCY = half the CPUs, PASSWORD_HASH_QUEUE=4
  (beyond: 503 + Retry-After);
* unbounded: the same slots, a queue of 10000 (the most the setting takes): every login
  waits its turn, as before.

Reported: the user's login latency p50/p99 and how many of their logins succeeded, and the
flood's answers. Run it alone (it takes the machine's CPUs): .venv/bin/python bench/passwords.py
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Result, Row, percentiles

PASSWORD = "bench pass phrase 1"
FLOOD = 48
SECONDS = 8.0
UPAK = Path(sys.executable).with_name("upak")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_up(url: str, deadline: float) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=1) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get("/health")).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("upak serve did not start")


async def run(queue: int, workdir: Path) -> dict[str, object]:
    port = _free_port()
    env = {
        **os.environ,
        "REDIS_URL": "redis://127.0.0.1:1/0",  # nothing there: the memory store, no Redis cost
        "RATE_LIMIT_ENABLED": "false",  # the flood must reach the hasher
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/q{queue}.db",
        "PASSWORD_HASH_QUEUE": str(queue),
        "UPAK_PORT": str(port),
        "LOG_LEVEL": "ERROR",
    }
    server = subprocess.Popen([str(UPAK), "serve"], env=env, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_up(url, time.monotonic() + 30)
        limits = httpx.Limits(max_connections=FLOOD + 4)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            body = {"email": "user@example.com", "password": PASSWORD}
            assert (await client.post("/auth/register", json=body)).status_code == 201
            flood_status: dict[int, int] = {}
            refusals: list[float] = []
            user_latency: list[float] = []
            user_ok = 0
            deadline = time.monotonic() + SECONDS

            async def attacker(n: int) -> None:
                i = 0
                while time.monotonic() < deadline:
                    i += 1
                    started = time.perf_counter()
                    response = await client.post(
                        "/auth/login",
                        json={"email": f"nobody{n}-{i}@example.com", "password": PASSWORD},
                    )
                    if response.status_code == 503:
                        refusals.append(time.perf_counter() - started)
                    flood_status[response.status_code] = (
                        flood_status.get(response.status_code, 0) + 1
                    )

            async def user() -> None:
                nonlocal user_ok
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    response = await client.post("/auth/login", json=body)
                    user_latency.append(time.perf_counter() - started)
                    user_ok += response.status_code == 200
                    client.cookies.clear()
                    await asyncio.sleep(0.2)

            await asyncio.gather(user(), *(attacker(n) for n in range(FLOOD)))
        return {
            "user": percentiles(user_latency),
            "user_logins": len(user_latency),
            "user_ok": user_ok,
            "flood": flood_status,
            "refusal": percentiles(refusals),
        }
    finally:
        server.terminate()
        server.wait(timeout=20)


async def main() -> None:
    import tempfile

    result = Result("passwords", "Password hashing under a login flood")
    with tempfile.TemporaryDirectory(prefix="upak-bench-pw-") as tmp:
        bounded = await run(4, Path(tmp))  # the default PASSWORD_HASH_QUEUE
        unbounded = await run(10_000, Path(tmp))
    for quantile in ("p99", "p50"):
        result.add(
            Row(
                f"login flood: the user's login {quantile}, bounded vs unbounded hashing",
                bounded["user"][quantile],  # type: ignore[index]
                unbounded["user"][quantile],  # type: ignore[index]
                "same flood, hash queue unbounded",
                unit="ms",
                higher_is_better=False,
            )
        )
    result.add(
        Row(
            "login flood: p99 of a 503 (bound reached) answer",
            bounded["refusal"]["p99"],  # type: ignore[index]
            unit="ms",
            higher_is_better=False,
        )
    )
    for name, run_result in (("bounded", bounded), ("unbounded", unbounded)):
        result.notes.append(
            f"{name}: the user logged in {run_result['user_ok']} of {run_result['user_logins']} "
            f"times; flood answers by status {run_result['flood']}"
        )
        print(f"  {result.notes[-1]}")
    result.extra = {"bounded": bounded, "unbounded": unbounded, "flood": FLOOD, "seconds": SECONDS}
    result.write()


if __name__ == "__main__":
    os.chdir(ROOT)
    asyncio.run(main())

"""What one Redis round trip costs the client: instructions per sequential GET, by callgrind.

The figure src/upak/store/wire.py's docstring gives for redis-py (its pooled asyncio client
next to the blocking one), measured the way it says: one caller, sequential GETs of one key
after a warm-up, the client process's instructions only (redis-server runs outside valgrind).
Each client runs in a process of its own under valgrind --tool=callgrind: it warms up, says
so, the counters are zeroed (callgrind_control --zero), it runs the counted GETs, says so, the
counters are dumped; instructions / GETs is the figure. Counted work, not time: the machine's
other load does not move it.

Clients: redis-py 8 asyncio (`redis.asyncio.Redis`, its default pool, hiredis installed),
redis-py 8 blocking (`redis.Redis`), and ours: one `Wire` (upak.store.wire) carrying the same
GET, and the store's `get` (the Lua GET the store sends, through the same wire).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, Result, Row, callgrind_control, callgrind_total, redis_server

WARMUP = 2_000
COUNTED = 3_000
KEY = "upak:client-cost"
CLIENTS = {
    "redis-py asyncio": "redis-py 8 asyncio Redis, default pool, hiredis",
    "redis-py blocking": "redis-py 8 blocking Redis, default pool, hiredis",
    "wire": "ours: one Wire (upak.store.wire), GET",
    "store": "ours: the store's get (Lua GET by EVALSHA, one Wire)",
}


async def _async_client(kind: str, url: str):  # type: ignore[no-untyped-def]
    """An async `get()` of KEY for `kind`, and its closer."""
    if kind == "redis-py asyncio":
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url)
        return (lambda: client.get(KEY)), client.aclose
    if kind == "wire":
        from upak.connect import WireTarget
        from upak.store.wire import open_wire

        port = int(url.rsplit(":", 1)[1].split("/")[0])
        wire = await open_wire(WireTarget(host="127.0.0.1", port=port, socket_timeout=5))

        async def close() -> None:
            wire.close()

        return (lambda: wire.call(("GET", KEY))), close
    from upak.config import load_settings
    from upak.store import build_store

    store = build_store(load_settings(env_file=None, redis_url=url))
    await store.start()
    return (lambda: store.get(KEY)), store.close


def child(kind: str, url: str) -> None:
    """Run under valgrind: warm up, wait for the zeroing, run the counted GETs, report."""

    def handshake(word: str) -> None:
        print(word, flush=True)
        sys.stdin.readline()

    if kind == "redis-py blocking":
        import redis

        client = redis.Redis.from_url(url)
        for _ in range(WARMUP):
            client.get(KEY)
        handshake("ready")
        for _ in range(COUNTED):
            client.get(KEY)
        handshake("done")
        return

    async def run() -> None:
        get, close = await _async_client(kind, url)
        for _ in range(WARMUP):
            await get()
        await asyncio.to_thread(handshake, "ready")
        for _ in range(COUNTED):
            await get()
        await asyncio.to_thread(handshake, "done")
        await close()

    asyncio.run(run())


def instructions_per_get(kind: str, url: str) -> float:
    outdir = Path(tempfile.mkdtemp(prefix="upak-bench-client-"))
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={outdir}/cg.%p",
            sys.executable,
            __file__,
            "--child",
            kind,
            url,
        ],
        cwd=ROOT / "bench",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind}: the client under callgrind did not warm up")
        callgrind_control("zero", proc.pid)
        proc.stdin.write("\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != "done":
            raise RuntimeError(f"{kind}: the client under callgrind did not finish")
        callgrind_control("dump", proc.pid)
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (dump,) = outdir.glob("cg.*.1")
    return callgrind_total(dump) / COUNTED


def main() -> None:
    result = Result("client_cost", "A Redis round trip's cost to the client (callgrind)")
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("valgrind is not installed (apt-get install valgrind; make bench does)")
    with redis_server() as server:
        server.client().set(KEY, "x" * 64)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two cores
            jobs = {kind: pool.submit(instructions_per_get, kind, server.url) for kind in CLIENTS}
            counts = {kind: job.result() for kind, job in jobs.items()}
    setup = (
        f"1 caller, {COUNTED:,} sequential GETs of one key after {WARMUP:,} warm-up GETs; "
        "the client process's instructions only"
    )
    for ours in ("wire", "store"):
        for peer in ("redis-py asyncio", "redis-py blocking"):
            result.add(
                Row(
                    f"instructions per GET round trip: {CLIENTS[ours]} vs {peer}",
                    counts[ours],
                    counts[peer],
                    CLIENTS[peer],
                    unit="instr",
                    higher_is_better=False,
                    setup=setup,
                )
            )
    result.extra["instructions_per_get"] = counts
    result.notes.append(
        "Each client in its own process under valgrind --tool=callgrind, counters zeroed "
        "after the warm-up and dumped after the counted GETs (callgrind_control), divided by "
        "the GETs: instructions, not time, so the machine's load does not move them; kernel "
        "time and redis-server are not in them. Two clients at a time on the 2 cores. This "
        "is the figure src/upak/store/wire.py's docstring quotes for redis-py."
    )
    result.write()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
    else:
        main()

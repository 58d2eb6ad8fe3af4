"""HTTP metrics: what each exporter adds to a request, ours next to the two well-kept ones.

One FastAPI app shaped like ours (25 routes, the measured one a template with a path
parameter, near the end of the list as `/auth/sessions/{handle}` is), called in-process
through ASGI (no sockets, no server: only the middleware differs between the runs), with:
no metrics, ours (upak.web.middleware.http_metrics), starlette-exporter and
prometheus-fastapi-instrumentator (requests + latency only, status grouped). The figure is
the added CPU time per request over the bare app: the median, over ROUNDS interleaved
rounds, of each round's difference. Ours also runs in prometheus_client's multiprocess mode
(a subprocess with PROMETHEUS_MULTIPROC_DIR set, as under `upak serve --workers N`).

    .venv/bin/python bench/http_metrics.py        # needs the bench extra (make bench)

On this 2-core box, shared, CPU time per request (a run of 2026-12-02): bare app 216 us;
ours +19 us, +31 us in multiprocess mode; starlette-exporter +441 us;
prometheus-fastapi-instrumentator +149 us.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from fastapi import FastAPI

from common import asgi_get

ROUNDS = 9
REQUESTS = 3000
KINDS = ("none", "ours", "starlette-exporter", "instrumentator")


def build(kind: str) -> Any:
    app = FastAPI()
    for n in range(24):
        app.add_api_route(f"/r{n}/{{x}}", lambda x: x, methods=["GET"])

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    if kind == "ours":
        from upak.store import FailoverStore, MemoryStore
        from upak.web.metrics import Metrics
        from upak.web.middleware.http_metrics import HttpMetrics

        app.add_middleware(HttpMetrics, metrics=Metrics(FailoverStore(None, MemoryStore())))
    elif kind == "starlette-exporter":
        from starlette_exporter import PrometheusMiddleware

        app.add_middleware(PrometheusMiddleware, prefix="upak_http", group_paths=True)
    elif kind == "instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator, metrics

        inst = Instrumentator(should_group_status_codes=True)
        inst.add(metrics.requests(), metrics.latency())
        inst.instrument(app)
    return app


async def per_request(app: Any, requests: int) -> float:
    for _ in range(200):  # warm: route caches, label children
        await asgi_get(app, "/items/7")
    # CPU time of this process: the other processes on a busy machine do not count.
    started = time.process_time()
    for _ in range(requests):
        await asgi_get(app, "/items/7")
    return (time.process_time() - started) / requests


def run(kinds: tuple[str, ...]) -> dict[str, list[float]]:
    apps = {kind: build(kind) for kind in kinds}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(ROUNDS):
        for kind, app in apps.items():
            times[kind].append(asyncio.run(per_request(app, REQUESTS)))
    return times


def main() -> None:
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(run(("none", "ours"))))
        return
    times = run(KINDS)
    with tempfile.TemporaryDirectory() as multiproc:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": multiproc}
        child = subprocess.run(
            [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True
        )
        child.check_returncode()
        multi = json.loads(child.stdout)
    base = statistics.median(times["none"])
    print(f"bare app: {base * 1e6:.1f} us/request (median of {ROUNDS} rounds)")
    rows = [(kind, times[kind], times["none"]) for kind in KINDS[1:]]
    rows.append(("ours, multiprocess", multi["ours"], multi["none"]))
    for kind, measured, bare in rows:
        # Paired: each round's run next to the bare app's run of the same round.
        added = statistics.median(m - b for m, b in zip(measured, bare, strict=True))
        print(f"{kind:>20}: +{added * 1e6:.1f} us/request")


if __name__ == "__main__":
    main()

"""The whole service as a user runs it: `upak serve --workers N` in a subprocess.

Used by multi-process tests and by the load and chaos benches, so both exercise the real
server with real worker processes sharing one Redis and one database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from tests.support.redis_servers import free_port

UPAK = [sys.executable, "-m", "upak"]

# tests/store/test_failover.py's quick_failover_settings, as a served process reads them: an
# outage is noticed, and a recovery followed, within a fraction of a second.
QUICK_FAILOVER_ENV = {
    "REDIS_SOCKET_TIMEOUT": "0.2",
    "REDIS_CONNECT_TIMEOUT": "0.2",
    "REDIS_HEALTH_INTERVAL": "0.1",
    "REDIS_PROBE_BACKOFF_MAX": "0.2",
}


@dataclass
class Service:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _wait_healthy(service: Service, workers: int, timeout: float) -> None:
    """Until every worker process has answered /health (each new connection may land on any)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"upak serve exited early:\n{service.log()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            response = httpx.get(service.url + "/health", timeout=0.5)
            seen.add(int(response.json()["worker"]))
            if len(seen) >= workers:
                return
        time.sleep(0.02)
    raise RuntimeError(f"upak serve was not healthy within {timeout}s:\n{service.log()[-3000:]}")


@contextlib.contextmanager
def running_service(
    env: dict[str, str], workers: int = 2, timeout: float = 30.0
) -> Iterator[Service]:
    """Serve with `env` on a free port; stops the server (and its workers) on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="upak-service-"))
    port = free_port()
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "UPAK_", "RATE_", "PROMETHEUS_"))
    }
    full_env.update(
        {
            "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/upak.db",
            "LOG_LEVEL": "WARNING",
            # The workers' shared outage tier, private to this service (not /dev/shm).
            "UPAK_FALLBACK_PATH": str(workdir / "tier"),
            **env,
        }
    )
    log_path = workdir / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*UPAK, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
            env=full_env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(port, proc, log_path, workdir)
    try:
        _wait_healthy(service, workers, timeout)
        yield service
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def served_in_thread(app: ASGIApp, timeout: float = 30.0, **config: Any) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread of this process on a free port: its base URL.

    For tests that need real HTTP (a browser, a fuzzer, a CLI) but an app built in the test
    (injected passwords, settings). `config` goes to uvicorn.Config (ssl_certfile=…).
    """
    port = config.pop("port", None) or free_port()
    host = config.pop("host", "127.0.0.1")
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="error", lifespan="on", **config)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {port} within {timeout}s")
            time.sleep(0.02)
        scheme = "https" if config.get("ssl_certfile") else "http"
        yield f"{scheme}://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)

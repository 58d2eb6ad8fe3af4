"""Real server processes (`upak serve`) sharing one Redis and one database.

Two single-worker servers on two ports stand for two workers, so a test knows which worker
answers; one `--workers 2` server shows the same through uvicorn's own process manager.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.redis_servers import RedisServer, free_port

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"


class Server:
    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.port, self.proc, self.log = port, proc, log
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **kwargs: object) -> httpx.Client:
        # No keep-alive: with several workers on one port, every request may land on any.
        limits = httpx.Limits(max_keepalive_connections=0)
        return httpx.Client(base_url=self.url, timeout=10, limits=limits, **kwargs)  # type: ignore[arg-type]

    def store_mode(self) -> str | None:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/health", timeout=2).json()["store"]
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    servers: list[Server] = []

    def start(redis: RedisServer, workers: int = 1) -> Server:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "UPAK_"))},
            "REDIS_URL": redis.url,
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/shared.db",
            "REDIS_SOCKET_TIMEOUT": "0.2",
            "REDIS_CONNECT_TIMEOUT": "0.2",
            "REDIS_HEALTH_INTERVAL": "0.1",
            "REDIS_PROBE_BACKOFF_MAX": "0.2",
            "LOG_LEVEL": "WARNING",
        }
        log = tmp_path / f"server-{port}.log"
        with open(log, "wb") as out:
            command = [sys.executable, "-m", "upak", "serve", "--port", str(port)]
            proc = subprocess.Popen(
                [*command, "--workers", str(workers)],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = Server(port, proc, log)
        servers.append(server)
        deadline = time.monotonic() + 60
        while server.store_mode() is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"upak serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        return server

    yield start
    for server in servers:
        server.stop()


def wait_for(condition, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within}s")
        time.sleep(0.05)


def login(client: httpx.Client, email: str) -> str:
    response = client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return response.cookies["upak_session"]


def me(server: Server, cookie: str) -> int:
    with server.client(cookies={"upak_session": cookie}) as client:
        return client.get("/me").status_code


def test_a_session_from_one_worker_is_valid_on_the_other(fresh_redis: RedisServer, serve) -> None:
    a, b = serve(fresh_redis), serve(fresh_redis)
    with a.client() as client:
        assert (
            client.post(
                "/auth/register", json={"email": "w@example.com", "password": PASSWORD}
            ).status_code
            == 201
        )
        cookie = login(client, "w@example.com")
    assert me(a, cookie) == 200 and me(b, cookie) == 200
    with b.client(cookies={"upak_session": cookie}) as client:
        assert client.post("/auth/logout").status_code == 204
    assert me(a, cookie) == 401 and me(b, cookie) == 401


def test_redis_killed_while_logged_in(fresh_redis: RedisServer, serve) -> None:
    a, b = serve(fresh_redis), serve(fresh_redis)
    with a.client() as client:
        for email in ("before@example.com", "during@example.com"):
            client.post("/auth/register", json={"email": email, "password": PASSWORD})
        before = login(client, "before@example.com")
    assert me(a, before) == 200 and me(b, before) == 200  # used on both: mirrored on both

    fresh_redis.client().save()  # what the seed's `save` lines keep on disk
    fresh_redis.kill()
    wait_for(lambda: a.store_mode() == b.store_mode() == "memory", 5, "both in memory mode")
    statuses = []
    with a.client() as client:
        during = login(client, "during@example.com")  # a login during the outage
    for _ in range(10):
        statuses += [me(a, before), me(b, before), me(a, during)]
        with a.client() as client:
            statuses.append(client.get("/health").status_code)
    assert set(statuses) == {200}, statuses  # no 5xx, nobody logged out
    assert me(b, during) == 401  # per process during the outage, as the seed says

    fresh_redis.start()  # same port, the saved dataset
    wait_for(lambda: a.store_mode() == b.store_mode() == "redis", 10, "both back on Redis")
    for server in (a, b):
        assert me(server, during) == 200, "a session made during the outage is shared now"
        assert me(server, before) == 200


def test_two_uvicorn_workers_share_sessions(fresh_redis: RedisServer, serve) -> None:
    server = serve(fresh_redis, workers=2)  # both workers migrate the one SQLite file at start
    with server.client() as client:
        assert (
            client.post(
                "/auth/register", json={"email": "two@example.com", "password": PASSWORD}
            ).status_code
            == 201
        )
        cookie = login(client, "two@example.com")
    assert [me(server, cookie) for _ in range(20)] == [200] * 20
    assert "Traceback" not in server.log.read_text()

"""A throwaway PostgreSQL cluster for tests that stop or hang the database.

`initdb` into a temporary directory as the `postgres` user (PostgreSQL refuses to run as
root), then `postgres` on a free port of 127.0.0.1 with trust authentication. The cluster is
this process's own: stopping it (`stop`), starting it again (`start`) or freezing it with
SIGSTOP (`pause`, the postmaster and every backend: a hung server, as an operator meets it)
never touches the system's PostgreSQL on 5432. initdb costs seconds, so the fixtures that use
it are session-scoped and every test gets a database of its own (`new_database`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.redis_servers import free_port

INSTALL_HINT = (
    "no PostgreSQL server binaries (initdb, postgres) under /usr/lib/postgresql/*/bin: "
    "install the Debian/Ubuntu package `postgresql`"
)
_RUN_AS = "postgres"


def postgres_bin() -> Path | None:
    """The newest PostgreSQL bin directory that has initdb and postgres, if any."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for directory in reversed(candidates):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "postgres").exists():
            return Path(directory)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _demote() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: `postgres` when we are root, ourselves otherwise."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(_RUN_AS)
    return entry.pw_uid, entry.pw_gid


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in its own temporary directory, on a free port."""

    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="upak-pg-")))
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _spawn(self, *args: str, wait: bool = True) -> subprocess.Popen[bytes]:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError(INSTALL_HINT)
        ids = _demote()
        proc = subprocess.Popen(
            [str(bindir / args[0]), *args[1:]],
            stdout=subprocess.DEVNULL if not wait else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            user=ids[0] if ids else None,
            group=ids[1] if ids else None,
            start_new_session=True,
        )
        if wait:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{args[0]} failed:\n{out.decode(errors='replace')[-2000:]}")
        return proc

    def init(self) -> PostgresServer:
        ids = _demote()
        if ids:
            os.chown(self.workdir, *ids)
        self._spawn(
            "initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "--no-sync", "-E",
            "UTF8",
        )  # fmt: skip
        return self

    def start(self, timeout: float = 30.0) -> PostgresServer:
        self.proc = self._spawn(
            "postgres", "-D", str(self.datadir), "-p", str(self.port), "-h", "127.0.0.1",
            "-k", str(self.workdir), "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=100",
            wait=False,
        )  # fmt: skip
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        bindir = postgres_bin()
        assert bindir is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited early with {self.proc.returncode}")
            ready = subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not accept connections within {timeout}s")

    def stop(self) -> None:
        """Fast shutdown (SIGINT): every connection is closed, as `pg_ctl stop -m fast`."""
        if self.paused:
            self.resume()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._signal_all(signal.SIGKILL)
            self.proc.wait()

    def _processes(self) -> list[int]:
        """The postmaster and its children. Each backend is a process group of its own
        (PostgreSQL calls setsid() in every child), so a group signal would miss them."""
        assert self.proc is not None
        pids = [self.proc.pid]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces.
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        return pids

    def _signal_all(self, signum: int) -> None:
        for pid in self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def pause(self) -> None:
        """SIGSTOP the whole cluster: connections stay open, nothing answers, and new
        connections wait in the listen backlog (a hung server, not a refusing one)."""
        self._signal_all(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)
        self.paused = False

    def psql(self, sql: str, database: str = "postgres") -> str:
        bindir = postgres_bin()
        assert bindir is not None
        done = subprocess.run(
            [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            capture_output=True, check=False, timeout=30,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode().strip()

    def new_database(self) -> str:
        """A fresh, empty database on this cluster; returns its URL."""
        name = f"upak_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """An initialised, running throwaway cluster, removed on exit."""
    server = PostgresServer()
    try:
        server.init().start()
        yield server
    finally:
        server.close()

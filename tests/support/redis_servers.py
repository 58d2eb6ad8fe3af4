"""Real redis-server processes for the suite: started on free ports, killed at the end.

Standalone servers (optionally with requirepass, ACL users, TLS, renamed commands), a local
3-master Redis Cluster, and a master + replica + sentinel set, all from the redis-server
binary on this machine. Nothing here stands in for Redis; it only starts the real thing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
INSTALL_HINT = "redis-server is not installed: install the Debian/Ubuntu package `redis-server`"


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(cluster_bus: bool = False) -> int:
    """A free local port; with `cluster_bus`, one whose +10000 bus port is free too."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not cluster_bus:
            return port
        if port <= 55535 and _bindable(port + 10000):
            return port


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"redis-server did not listen on {host}:{port} within {timeout}s")


@dataclass
class RedisServer:
    """One redis-server process in its own temporary directory."""

    port: int = field(default_factory=free_port)
    password: str | None = None
    config: dict[str, str | list[str]] = field(default_factory=dict)
    tls: dict[str, str] | None = None  # cert, key, ca for a TLS-only server
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="upak-redis-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def _config_text(self) -> str:
        lines = [
            "bind 127.0.0.1",
            f"dir {self.workdir}",
            "save ''",
            "appendonly no",
            "logfile redis.log",
            "protected-mode yes",
        ]
        if self.tls:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.tls['cert']}",
                f"tls-key-file {self.tls['key']}",
                f"tls-ca-cert-file {self.tls['ca']}",
                "tls-auth-clients no",
            ]
        else:
            lines.append(f"port {self.port}")
        if self.password:
            lines.append(f"requirepass {self.password}")
        for key, value in self.config.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key} {item}")
        return "\n".join(lines) + "\n"

    def start(self) -> RedisServer:
        if REDIS_SERVER is None:
            raise RuntimeError(INSTALL_HINT)
        conf = self.workdir / "redis.conf"
        conf.write_text(self._config_text())
        self.proc = subprocess.Popen(
            [REDIS_SERVER, str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        try:
            wait_for_port(self.port)
        except RuntimeError:
            log = (
                (self.workdir / "redis.log").read_text()
                if (self.workdir / "redis.log").exists()
                else ""
            )
            self.kill()
            raise RuntimeError(
                f"redis-server failed to start on {self.port}:\n{log[-2000:]}"
            ) from None
        return self

    def client(self, **kwargs: object) -> redis.Redis:
        opts: dict[str, object] = {"host": self.host, "port": self.port, "password": self.password}
        if self.tls:
            opts.update(ssl=True, ssl_ca_certs=self.tls["ca"], ssl_check_hostname=False)
        opts.update(kwargs)
        return redis.Redis(**opts)  # type: ignore[arg-type]

    # --- faults ---

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung server)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self, keep_data: bool) -> None:
        """Kill and start again on the same port, with or without the dataset."""
        if keep_data:
            with contextlib.suppress(redis.RedisError):
                self.client(socket_timeout=5).save()
        self.kill()
        if not keep_data:
            (self.workdir / "dump.rdb").unlink(missing_ok=True)
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_server(**kwargs: object) -> Iterator[RedisServer]:
    server = RedisServer(**kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def make_tls_files(directory: Path) -> dict[str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (openssl CLI)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "redis.key", directory / "redis.csr", directory / "redis.crt"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=upak-test-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )
    return {"cert": str(crt), "key": str(key), "ca": str(ca_crt)}


@dataclass
class RedisCluster:
    """A local cluster created with `redis-cli --cluster create`: masters, and as many
    replicas per master as asked for (none by default)."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def master_of_slot(self, slot: int, exclude: RedisServer | None = None) -> RedisServer:
        """The node that serves `slot` as master, as a live node other than `exclude` says."""
        ask = next(n for n in self.nodes if n is not exclude and n.proc and n.proc.poll() is None)
        for start, end, master, *_ in ask.client().execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise RuntimeError(f"slot {slot} is not covered")

    def wait_replicas_in_sync(self, count: int, timeout: float = 20.0) -> None:
        """Until `count` live replicas have their master link up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            synced = 0
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    continue
                info = node.client().info("replication")
                synced += info.get("role") == "slave" and info.get("master_link_status") == "up"
            if synced >= count:
                return
            time.sleep(0.1)
        raise RuntimeError(f"fewer than {count} cluster replicas came in sync")


def start_cluster(
    masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000, full_coverage: bool = True
) -> RedisCluster:
    """`replicas` per master; `node_timeout_ms` bounds how soon a dead master's replica is
    promoted (about twice it). `full_coverage=False` is `cluster-require-full-coverage no`:
    while one master is down the others keep serving their slots (without it every node
    answers CLUSTERDOWN until the failover ends)."""
    nodes = []
    try:
        for _ in range(masters * (1 + replicas)):
            nodes.append(
                RedisServer(
                    port=free_port(cluster_bus=True),
                    config={
                        "cluster-enabled": "yes",
                        "cluster-config-file": "nodes.conf",
                        "cluster-node-timeout": str(node_timeout_ms),
                        "cluster-require-full-coverage": "yes" if full_coverage else "no",
                    },
                ).start()
            )
        assert REDIS_CLI is not None
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *[f"127.0.0.1:{n.port}" for n in nodes],
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            infos = [n.client().execute_command("CLUSTER", "INFO").decode() for n in nodes]
            if all("cluster_state:ok" in info for info in infos):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the test cluster did not reach cluster_state:ok")
        group = RedisCluster(nodes)
        if replicas:
            group.wait_replicas_in_sync(masters * replicas)
        return group
    except BaseException:
        for node in nodes:
            node.stop()
        raise


@dataclass
class SentinelSet:
    """A master, one replica and one sentinel watching them as `upak-master`."""

    master: RedisServer
    replica: RedisServer
    sentinel: RedisServer
    service: str = "upak-master"

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}/0"

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            server.stop()


def start_sentinel_set() -> SentinelSet:
    servers: list[RedisServer] = []
    try:
        # No 5 s wait for more replicas before a diskless full sync (Redis 7's default).
        quick_sync = {"repl-diskless-sync-delay": "0"}
        master = RedisServer(config=dict(quick_sync)).start()
        servers.append(master)
        replica = RedisServer(
            config={**quick_sync, "replicaof": f"127.0.0.1 {master.port}"}
        ).start()
        servers.append(replica)
        sentinel = RedisServer()
        conf = sentinel.workdir / "sentinel.conf"
        conf.write_text(
            f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel.workdir}\n"
            f"sentinel monitor upak-master 127.0.0.1 {master.port} 1\n"
            "sentinel down-after-milliseconds upak-master 1000\n"
            "sentinel failover-timeout upak-master 5000\n"
        )
        assert REDIS_SERVER is not None
        sentinel.proc = subprocess.Popen(
            [REDIS_SERVER, str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=sentinel.workdir,
        )
        servers.append(sentinel)
        wait_for_port(sentinel.port)
        return SentinelSet(master, replica, sentinel)
    except BaseException:
        for server in servers:
            server.stop()
        raise

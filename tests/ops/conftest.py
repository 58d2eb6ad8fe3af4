"""Fixtures for the operator CLI: real redis-server processes, insecure and hardened, and a
runner that invokes `upak redis …` with a clean environment (no .env, no developer REDIS_*)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.redis_servers import RedisServer, make_tls_files, redis_server
from upak.cli import app
from upak.ops.conf import APP_RULES

ROOT_PASSWORD = "r00t-Secret-9f1c"
APP_PASSWORD = "app-Secret-4b2d"
CONFIG_ALIAS = "CONFIG_7f3a9c"
# The app user `upak redis config` generates (its rules come from APP_COMMANDS).
APP_ACL = f"upak on >{APP_PASSWORD} resetkeys ~upak:* resetchannels {APP_RULES}"


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """`upak redis ARGS` in-process, with only the variables given (plus PATH and HOME)."""
    clean: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(("REDIS_", "UPAK_"))
    }
    clean.update(env or {})
    runner = CliRunner()
    result = runner.invoke(
        app, ["redis", "--env-file", "/nonexistent/.env", *args], env=clean, catch_exceptions=False
    )
    return Result(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_redis(tls_files: dict[str, str]) -> Iterator[RedisServer]:
    with redis_server(tls=tls_files) as server:
        yield server


@pytest.fixture(scope="module")
def insecure_redis() -> Iterator[RedisServer]:
    """The seed's worst case: no password, every interface, CONFIG enabled, allkeys-lru."""
    with redis_server(
        config={
            "bind": "* -::*",
            "protected-mode": "no",
            "maxmemory-policy": "allkeys-lru",
            "tcp-keepalive": "0",
        }
    ) as server:
        yield server


@pytest.fixture(scope="module")
def hardened_redis() -> Iterator[RedisServer]:
    """requirepass for the operator's default user, an ACL app user limited to the prefix,
    CONFIG renamed, maxmemory with noeviction, save points."""
    with redis_server(
        password=ROOT_PASSWORD,
        config={
            "maxmemory": "64mb",
            "maxmemory-policy": "noeviction",
            "rename-command": f"CONFIG {CONFIG_ALIAS}",
            "save": "900 1",
            "user": APP_ACL,
        },
    ) as server:
        yield server


def hardened_env(server: RedisServer, ops: bool = True) -> dict[str, str]:
    env = {
        "REDIS_URL": f"redis://upak:{APP_PASSWORD}@127.0.0.1:{server.port}/0",
    }
    if ops:
        env.update(
            UPAK_OPS_USERNAME="default",
            UPAK_OPS_PASSWORD=ROOT_PASSWORD,
            UPAK_CONFIG_COMMAND=CONFIG_ALIAS,
        )
    return env


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tiny tmpfs (root only); skips the test where mounting is not possible."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)

"""The operator CLI as a new user meets it: `--env-file` with what `config --out` wrote,
`config --port`, and `monitor` ending with 130 on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from tests.ops.test_config_info_monitor import generated_server
from tests.support.redis_servers import RedisServer
from upak.cli import app

__all__ = ["generated_server"]  # the fixture, shared with the config tests


def _invoke(*args: str) -> tuple[int, str]:
    clean = {k: None for k in os.environ if k.startswith(("REDIS_", "UPAK_"))}
    result = CliRunner().invoke(app, ["redis", *args], env=clean, catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


def test_env_file_gives_the_ops_credentials_config_wrote(generated_server) -> None:
    port, values = generated_server  # redis-server on what `config --out` wrote
    # The file `config --out` wrote, plus where Redis is: nothing in the environment.
    env_file = Path(values["dir"]) / "upak-redis.env"
    env_file.write_text(env_file.read_text() + f"REDIS_HOST=127.0.0.1\nREDIS_PORT={port}\n")
    # INFO is the ops user's: the app user (REDIS_USERNAME) is refused it by the ACL.
    code, output = _invoke("--env-file", str(env_file), "info", "server", "--json")
    assert code == 0, output
    assert '"redis_version"' in output
    assert values["UPAK_OPS_PASSWORD"] not in output


def test_config_port(tmp_path: Path) -> None:
    code, output = _invoke("--env-file", "/nonexistent", "config", "--port", "6390")
    assert code == 0, output
    assert "\nport 6390\n" in output
    code, output = _invoke("--env-file", "/nonexistent", "config", "--production", "--port", "6391")
    assert code == 0 and "\ntls-port 6391\n" in output and "\nport 0\n" in output
    code, output = _invoke("--env-file", "/nonexistent", "config", "--port", "70000")
    assert code == 2 and "Traceback" not in output


def test_monitor_exits_130_on_ctrl_c(fresh_redis: RedisServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "UPAK_"))}
    env.update(REDIS_URL=fresh_redis.url)
    output = tmp_path / "monitor.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "upak", "redis", "--env-file", "/nonexistent", "monitor",
             "--interval", "0.1"],
            env=env, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    probe = fresh_redis.client(socket_timeout=5)
    try:
        deadline = time.monotonic() + 30
        # Connected (its client beside ours): Ctrl-C now lands in the refresh loop.
        while len(probe.client_list()) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, output.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        probe.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output.read_text()
    assert "Traceback" not in output.read_text()

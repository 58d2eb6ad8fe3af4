"""`upak redis config`, `info` and `monitor` against real servers."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from tests.conftest import make_settings
from tests.ops.conftest import run_cli
from tests.support.redis_servers import (
    REDIS_SERVER,
    RedisServer,
    free_port,
    make_tls_files,
    wait_for_port,
)
from upak.web.app import create_app


def generate(tmp_path: Path, *extra: str, env: dict | None = None) -> dict[str, str]:
    out = tmp_path / "conf"
    result = run_cli(
        "config",
        "--out",
        str(out),
        "--data-dir",
        str(tmp_path),
        "--acl-file",
        str(out / "users.acl"),
        "--logfile",
        "",
        *extra,
        env=env or {},
    )
    assert result.exit_code == 0, result.output
    env_lines = (out / "upak-redis.env").read_text().splitlines()
    assert (out / "upak-redis.env").stat().st_mode & 0o077 == 0
    return dict(line.split("=", 1) for line in env_lines) | {"dir": str(out)}


@pytest.fixture
def generated_server(tmp_path: Path):
    """A redis-server running the generated redis.conf and ACL file."""
    values = generate(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, f"{values['dir']}/redis.conf", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port, values
    finally:
        proc.kill()
        proc.wait()


def test_generated_config_is_valid_and_check_rejects_a_bad_one(tmp_path: Path):
    values = generate(tmp_path)
    conf = Path(values["dir"]) / "redis.conf"
    text = conf.read_text()
    assert "maxmemory-policy noeviction" in text and "allkeys-lru" in text  # the why
    assert "bind 127.0.0.1 -::1" in text and "tcp-keepalive 300" in text
    acl = (Path(values["dir"]) / "users.acl").read_text()
    assert "user default off" in acl and "~upak:*" in acl and values["REDIS_PASSWORD"] not in acl
    ok = run_cli("config", "--check", str(conf))
    assert ok.exit_code == 0 and "valid" in ok.stdout, ok.output
    conf.write_text(text + "maxmemory-policy evict-everything\n")
    bad = run_cli("config", "--check", str(conf))
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1
    assert "evict-everything" in bad.stderr and "must be one of" in bad.stderr


def test_production_config_with_tls_is_valid(tmp_path: Path):
    tls = make_tls_files(tmp_path / "tls")
    values = generate(tmp_path, "--production", "--tls-dir", str(Path(tls["cert"]).parent))
    text = (Path(values["dir"]) / "redis.conf").read_text()
    assert "port 0" in text and "tls-port 6380" in text and "appendonly yes" in text
    assert f"rename-command CONFIG {values['UPAK_CONFIG_COMMAND']}" in text
    result = run_cli("config", "--check", str(Path(values["dir"]) / "redis.conf"))
    assert result.exit_code == 0, result.output


def test_config_check_of_a_missing_file():
    result = run_cli("config", "--check", "/nonexistent/redis.conf")
    assert result.exit_code == 1 and "no such config file" in result.stderr


# Every command the issue lists for the app, inside one script, as the service runs them.
_APP_SCRIPT = """
redis.call('SET', KEYS[1], 'v', 'PX', 60000)
redis.call('GET', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 60000)
redis.call('PTTL', KEYS[1])
redis.call('HSET', KEYS[2], 'a', '1')
redis.call('HMGET', KEYS[2], 'a')
local now = redis.call('TIME')
redis.call('ZADD', KEYS[4], now[1], 'x')
redis.call('ZRANGE', KEYS[4], 0, -1)
redis.call('ZCARD', KEYS[4])
redis.call('ZREM', KEYS[4], 'x')
redis.call('LPUSH', KEYS[5], now[1])
redis.call('LINDEX', KEYS[5], -1)
redis.call('LLEN', KEYS[5])
redis.call('RPOP', KEYS[5])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[5])
return 1
"""


async def test_generated_acl_lets_the_app_work_and_nothing_more(generated_server):
    import redis.asyncio
    import redis.exceptions

    from upak.store.operation import NO_ARGS
    from upak.store.primitives import CLAIM_ONCE, DELETE, GET, Expiring
    from upak.store.redis import RedisStore

    port, values = generated_server
    url = f"redis://upak:{values['REDIS_PASSWORD']}@127.0.0.1:{port}/0"
    store = RedisStore.from_settings(make_settings(redis_url=url))
    client = store.client
    try:
        # The service's real operations (connection set-up, EVALSHA, EVAL on NOSCRIPT) as
        # the app user.
        assert await store.run(CLAIM_ONCE, ["upak:replay:{t}:1"], Expiring("1", 60000)) is True
        assert await store.run(CLAIM_ONCE, ["upak:replay:{t}:1"], Expiring("1", 60000)) is False
        assert await store.run(GET, ["upak:replay:{t}:1"], NO_ARGS) == b"1"
        await store.run(DELETE, ["upak:replay:{t}:1"], NO_ARGS)
        keys = [f"upak:cache:{{t}}:{n}" for n in range(5)]
        assert await client.eval(_APP_SCRIPT, len(keys), *keys) == 1
        assert await client.ping()
        for forbidden in (
            ("FLUSHALL",),
            ("CONFIG", "GET", "dir"),
            ("GET", "elsewhere"),
            ("KEYS", "*"),
            ("SHUTDOWN",),
            ("HGETALL", "upak:cache:{t}:1"),  # a read, on the prefix, but not the service's
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                await client.execute_command(*forbidden)
    finally:
        await store.close()
    env = {
        "REDIS_URL": url,
        "UPAK_OPS_USERNAME": "upak-ops",
        "UPAK_OPS_PASSWORD": values["UPAK_OPS_PASSWORD"],
    }
    assert run_cli("check", env=env).exit_code == 0
    audit = run_cli("audit", "--json", env=env)
    report = json.loads(audit.stdout)
    assert audit.exit_code == 0, report
    assert run_cli("backup", "--dest", str(Path(values["dir"]) / "b"), env=env).exit_code == 0
    assert (
        run_cli("backup", "--dest", str(Path(values["dir"]) / "s"), "--stream", env=env).exit_code
        == 0
    )
    assert run_cli("info", env=env).exit_code == 0


def test_info_counts_upak_keys_by_feature(fresh_redis: RedisServer):
    client = fresh_redis.client()
    for key in (
        "upak:replay:a",
        "upak:replay:b",
        "upak:sessions:{u1}:s",
        "upak:cache:x",
        "upak:ratelimit:ip",
        "upak:other:z",
        "not-upak",
    ):
        client.set(key, "1")
    client.get("upak:replay:a")
    client.get("missing")
    result = run_cli("info", "--json", env={"REDIS_URL": fresh_redis.url})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    keys = report["upak_keys"]
    assert keys["by_feature"] == {
        "replay": 2,
        "ratelimit": 1,
        "cache": 1,
        "sessions": 1,
        "other": 1,
    }
    assert keys["complete"] and keys["total"] == 6
    node = report["nodes"][0]
    assert set(node["sections"]) == {
        "server",
        "clients",
        "memory",
        "stats",
        "persistence",
        "keyspace",
    }
    assert node["derived"]["hit_ratio"] == 0.5 and node["derived"]["evicted_keys"] == 0
    limited = json.loads(
        run_cli(
            "info", "keyspace", "--json", "--scan-limit", "2", env={"REDIS_URL": fresh_redis.url}
        ).stdout
    )
    assert limited["upak_keys"]["total"] == 2 and not limited["upak_keys"]["complete"]


def test_info_memory_against_maxmemory(fresh_redis: RedisServer):
    fresh_redis.client().config_set("maxmemory", str(64 * 1024 * 1024))
    result = run_cli("info", "memory", env={"REDIS_URL": fresh_redis.url})
    assert result.exit_code == 0 and "of 67.1 MB" in result.stdout  # 64 MiB, in SI units


def test_info_rejects_an_unknown_section(shared_redis: RedisServer):
    result = run_cli("info", "bogus", env={"REDIS_URL": shared_redis.url})
    assert result.exit_code == 2 and "unknown section 'bogus'" in result.stderr


def test_monitor_shows_the_dashboard_and_the_app_store(shared_redis: RedisServer):
    app = create_app(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        time.sleep(0.2)
        result = run_cli(
            "monitor",
            "--count",
            "2",
            "--interval",
            "0.1",
            "--app",
            f"http://127.0.0.1:{port}",
            env={"REDIS_URL": shared_redis.url},
        )
    finally:
        server.should_exit = True
        thread.join(10)
    assert result.exit_code == 0, result.output
    for word in (
        "ops/s",
        "memory",
        "hit ratio",
        "clients",
        "evictions",
        "UPAK keys",
        "replay",
        "sessions",
        "UPAK store",
        "memory",
    ):
        assert word in result.stdout
    assert "UPAK store" in result.stdout and "memory" in result.stdout.split("UPAK store")[1]


def test_monitor_of_an_unreachable_server_is_one_line():
    result = run_cli("monitor", "--count", "1", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 1 and "connection refused" in result.stderr

"""`upak redis check` on real servers: the happy path, and every failure as one line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.ops.conftest import APP_PASSWORD, ROOT_PASSWORD, hardened_env, run_cli
from tests.support.redis_servers import RedisServer, free_port, redis_server


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_check_passes_and_reports_the_server(shared_redis: RedisServer):
    result = run_cli("check", "--json", env={"REDIS_URL": shared_redis.url})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["step"] for s in report["steps"]] == ["PING", "SET", "GET", "DEL", "INFO server"]
    assert report["ok"] and report["mode"] == "standalone"
    assert report["version"].startswith(("6.", "7.", "8."))
    assert report["latency_ms"] > 0 and report["uptime_seconds"] >= 0
    # The test key lives under the prefix and is gone afterwards.
    key = report["steps"][1]["detail"]
    assert key.startswith("upak:check:")
    assert shared_redis.client().exists(key) == 0


def test_check_table_output(shared_redis: RedisServer):
    result = run_cli("check", env={"REDIS_URL": shared_redis.url})
    assert result.exit_code == 0
    for word in ("PING", "PONG", "Hello UPAK", "standalone", "latency", "uptime"):
        assert word in result.stdout


def test_check_as_the_least_privilege_app_user(hardened_redis: RedisServer):
    result = run_cli("check", env=hardened_env(hardened_redis, ops=False))
    assert result.exit_code == 0, result.output
    assert "INFO denied" in result.stdout  # the app user may not run INFO, and that is fine
    uptime = next(line for line in result.stdout.splitlines() if "uptime" in line)
    assert "unknown" in uptime, uptime  # not "0s": nobody knows how long it has been up
    report = json.loads(
        run_cli("check", "--json", env=hardened_env(hardened_redis, ops=False)).stdout
    )
    assert report["ok"] is True and report["uptime_seconds"] is None


def test_dead_port_is_connection_refused():
    port = free_port()
    result = run_cli("check", env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert result.exit_code == 1
    one_line_error(result, f"connection refused at 127.0.0.1:{port}", "REDIS_URL")


def test_wrong_password(hardened_redis: RedisServer):
    url = f"redis://:not-the-password@127.0.0.1:{hardened_redis.port}/0"
    line = one_line_error(
        run_cli("check", env={"REDIS_URL": url}),
        "authentication failed",
        "WRONGPASS",
        "REDIS_PASSWORD",
    )
    assert "not-the-password" not in line


def test_missing_password_is_noauth(hardened_redis: RedisServer):
    url = f"redis://127.0.0.1:{hardened_redis.port}/0"
    one_line_error(run_cli("check", env={"REDIS_URL": url}), "NOAUTH", "set REDIS_PASSWORD")


def test_acl_permission_denied(hardened_redis: RedisServer):
    client = hardened_redis.client()
    client.execute_command(
        "ACL",
        "SETUSER",
        "readonly",
        "on",
        ">ro-pass",
        "~upak:*",
        "-@all",
        "+@connection",
        "+get",
        "+ping",
    )
    url = f"redis://readonly:ro-pass@127.0.0.1:{hardened_redis.port}/0"
    one_line_error(
        run_cli("check", env={"REDIS_URL": url}),
        "SET failed",
        "ACL permission denied for user 'readonly'",
        "'set'",
    )


def test_wrong_db_index():
    with redis_server(config={"databases": "4"}) as server:
        url = f"redis://127.0.0.1:{server.port}/9"
        one_line_error(run_cli("check", env={"REDIS_URL": url}), "wrong DB index 9")


def test_timeout_on_a_hung_server(fresh_redis: RedisServer):
    fresh_redis.pause()
    try:
        result = run_cli(
            "--timeout",
            "0.3",
            "check",
            env={"REDIS_URL": fresh_redis.url, "REDIS_CONNECT_TIMEOUT": "0.3"},
        )
    finally:
        fresh_redis.resume()
    one_line_error(result, "timeout talking to")


def test_plain_client_against_a_tls_server(tls_redis: RedisServer):
    url = f"redis://127.0.0.1:{tls_redis.port}/0"
    one_line_error(run_cli("check", env={"REDIS_URL": url}), "TLS mismatch", "rediss://")


def test_tls_client_against_a_plain_server(shared_redis: RedisServer, tls_files):
    env = {
        "REDIS_URL": f"rediss://127.0.0.1:{shared_redis.port}/0",
        "REDIS_SSL_CA_CERTS": tls_files["ca"],
    }
    one_line_error(
        run_cli("--timeout", "1", "check", env=env), "TLS handshake failed", "plain RESP"
    )


def test_tls_with_an_unknown_ca(tls_redis: RedisServer):
    url = f"rediss://127.0.0.1:{tls_redis.port}/0"
    one_line_error(
        run_cli("check", env={"REDIS_URL": url}),
        "TLS handshake failed",
        "certificate verify failed",
        "REDIS_SSL_CA_CERTS",
    )


def test_tls_with_the_right_ca_passes(tls_redis: RedisServer, tls_files):
    env = {
        "REDIS_URL": f"rediss://127.0.0.1:{tls_redis.port}/0",
        "REDIS_SSL_CA_CERTS": tls_files["ca"],
    }
    assert run_cli("check", env=env).exit_code == 0


def test_bad_setting_is_a_configuration_error():
    result = run_cli("check", env={"REDIS_URL": "http://nope"})
    assert result.exit_code == 2
    one_line_error(result, "configuration error", "REDIS_URL")


def test_json_error_shape_and_no_secrets(hardened_redis: RedisServer):
    url = f"redis://upak:wrong-{APP_PASSWORD}@127.0.0.1:{hardened_redis.port}/0"
    result = run_cli("check", "--json", env={"REDIS_URL": url})
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["ok"] is False and "authentication failed" in body["error"]
    assert APP_PASSWORD not in result.output and ROOT_PASSWORD not in result.output


def test_env_file_is_read(tmp_path: Path, shared_redis: RedisServer):
    env_file = tmp_path / ".env"
    env_file.write_text(f"REDIS_HOST=127.0.0.1\nREDIS_PORT={shared_redis.port}\n")
    from typer.testing import CliRunner

    from upak.cli import app

    result = CliRunner().invoke(
        app, ["redis", "--env-file", str(env_file), "check"], env={"REDIS_URL": None}
    )
    assert result.exit_code == 0, result.output

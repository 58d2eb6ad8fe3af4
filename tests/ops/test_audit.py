"""`upak redis audit`: fails the seed's insecure server and passes a hardened one, check by
check; reports unknown (never pass) for what it cannot see when CONFIG is unavailable."""

from __future__ import annotations

import json

import pytest

from tests.ops.conftest import APP_PASSWORD, ROOT_PASSWORD, hardened_env, run_cli
from tests.support.redis_servers import RedisServer

EVERY_CHECK = [
    "auth-required",
    "default-user",
    "app-user",
    "privileged-users",
    "dangerous-commands",
    "bind",
    "protected-mode",
    "tls",
    "maxmemory",
    "eviction-policy",
    "persistence",
    "tcp-keepalive",
    "version",
]


def audit(env: dict[str, str], *extra: str) -> tuple[int, dict]:
    result = run_cli("audit", "--json", *extra, env=env)
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout)


def statuses(report: dict) -> dict[str, str]:
    return {f["id"]: f["status"] for f in report["findings"]}


def test_insecure_server_fails_check_by_check(insecure_redis: RedisServer):
    code, report = audit({"REDIS_URL": insecure_redis.url})
    assert code == 1
    found = statuses(report)
    assert list(found) == EVERY_CHECK
    # Same binary for both servers: the version check passes on both; every other fails.
    assert found == {check: "pass" if check == "version" else "fail" for check in EVERY_CHECK}
    by_id = {f["id"]: f for f in report["findings"]}
    for finding in report["findings"]:
        if finding["status"] == "fail":
            assert finding["reason"] and finding["fix"], finding
    assert "allkeys-lru" in by_id["eviction-policy"]["reason"]
    assert "noeviction" in by_id["eviction-policy"]["fix"]
    assert "FLUSHALL: allowed" in by_id["dangerous-commands"]["reason"]
    # The probes changed nothing: FLUSHALL in its probe form is a syntax error.
    insecure_redis.client().set("upak:replay:still-here", "1")
    audit({"REDIS_URL": insecure_redis.url})
    assert insecure_redis.client().get("upak:replay:still-here") == b"1"


def test_hardened_server_passes_check_by_check(hardened_redis: RedisServer):
    code, report = audit(hardened_env(hardened_redis))
    assert statuses(report) == dict.fromkeys(EVERY_CHECK, "pass"), report
    assert code == 0 and report["ok"] is True and report["config_available"] is True
    by_id = {f["id"]: f for f in report["findings"]}
    assert "FLUSHALL: denied by ACL" in by_id["dangerous-commands"]["reason"]
    assert "CONFIG: renamed away" in by_id["dangerous-commands"]["reason"]


def test_without_config_the_rest_is_unknown_never_passed(hardened_redis: RedisServer):
    # The app user alone: CONFIG is renamed and denied, INFO and ACL LIST are denied.
    code, report = audit(hardened_env(hardened_redis, ops=False))
    assert code == 1 and report["config_available"] is False
    found = statuses(report)
    for check in (
        "bind",
        "protected-mode",
        "tls",
        "persistence",
        "tcp-keepalive",
        "maxmemory",
        "eviction-policy",
        "version",
    ):
        assert found[check] == "unknown", (check, found)
    # What the probes can prove still passes; what only the ACLs show is unknown.
    for check in ("auth-required", "default-user", "dangerous-commands"):
        assert found[check] == "pass", (check, found)
    assert found["app-user"] == found["privileged-users"] == "unknown"


def test_config_renamed_infers_from_info(hardened_redis: RedisServer):
    # An ops user that may run INFO, but CONFIG under its old name is gone.
    env = hardened_env(hardened_redis)
    env.pop("UPAK_CONFIG_COMMAND")
    code, report = audit(env)
    found = statuses(report)
    assert code == 1 and report["config_available"] is False
    assert found["maxmemory"] == found["eviction-policy"] == found["version"] == "pass"
    assert found["bind"] == found["protected-mode"] == found["tcp-keepalive"] == "unknown"
    assert found["persistence"] == "unknown"


def test_eviction_policies_that_can_drop_security_keys(fresh_redis: RedisServer):
    client = fresh_redis.client()
    for policy in ("volatile-lru", "volatile-ttl", "allkeys-lfu"):
        client.config_set("maxmemory-policy", policy)
        _, report = audit({"REDIS_URL": fresh_redis.url})
        assert statuses(report)["eviction-policy"] == "fail", policy


def test_table_output_and_exit_status(insecure_redis: RedisServer, hardened_redis: RedisServer):
    bad = run_cli("audit", env={"REDIS_URL": insecure_redis.url})
    assert bad.exit_code == 1
    assert "FAIL" in bad.stdout and "fix:" in bad.stdout
    good = run_cli("audit", env=hardened_env(hardened_redis))
    assert good.exit_code == 0 and "13 pass" in good.stdout
    assert ROOT_PASSWORD not in good.output + bad.output


def test_audit_of_an_unreachable_server_is_one_line():
    result = run_cli("audit", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "connection refused" in result.stderr


@pytest.mark.parametrize("warn_ok", [False, True])
def test_warnings_fail_unless_allowed(fresh_redis: RedisServer, warn_ok: bool):
    client = fresh_redis.client()
    client.config_set("tcp-keepalive", "900")  # a warning, not a failure
    args = ("--allow-warnings",) if warn_ok else ()
    _, report = audit({"REDIS_URL": fresh_redis.url}, *args)
    assert statuses(report)["tcp-keepalive"] == "warn"


def _root(server: RedisServer):
    import redis

    return redis.Redis(port=server.port, password=ROOT_PASSWORD, decode_responses=True)


def test_a_dangerous_app_user_fails(hardened_redis: RedisServer):
    # The review's finding: +@dangerous on the prefix passed "least-privilege" before.
    root = _root(hardened_redis)
    root.execute_command(
        "ACL", "SETUSER", "risky", "on", f">{APP_PASSWORD}", "resetkeys", "~upak:*",
        "-@all", "+@read", "+@write", "+@scripting", "+@connection", "+@dangerous",
    )  # fmt: skip
    try:
        env = hardened_env(hardened_redis)
        env["REDIS_URL"] = f"redis://risky:{APP_PASSWORD}@127.0.0.1:{hardened_redis.port}/0"
        code, report = audit(env)
    finally:
        root.execute_command("ACL", "DELUSER", "risky")
    assert "findings" in report, report
    by_id = {f["id"]: f for f in report["findings"]}
    assert code == 1 and by_id["app-user"]["status"] == "fail"
    reason = by_id["app-user"]["reason"]
    assert "@admin/@dangerous" in reason and "commands the service never uses" in reason
    for command in ("ACL", "REPLICAOF", "SAVE", "CLIENT"):
        assert command in reason, (command, reason)


def test_an_app_user_with_one_extra_command_fails(hardened_redis: RedisServer):
    root = _root(hardened_redis)
    root.execute_command("ACL", "SETUSER", "upak", "+hgetall")
    try:
        _, report = audit(hardened_env(hardened_redis))
    finally:
        root.execute_command("ACL", "SETUSER", "upak", "-hgetall")
    app_user = {f["id"]: f for f in report["findings"]}["app-user"]
    assert app_user["status"] == "fail" and "HGETALL" in app_user["reason"], app_user


def test_another_all_powerful_user_is_flagged(hardened_redis: RedisServer):
    root = _root(hardened_redis)
    root.execute_command("ACL", "SETUSER", "legacy", "on", ">legacy-pass-1", "~*", "+@all")
    root.execute_command("ACL", "SETUSER", "parked", "off", "~*", "+@all")
    try:
        _, report = audit(hardened_env(hardened_redis))
    finally:
        root.execute_command("ACL", "DELUSER", "legacy", "parked")
    found = {f["id"]: f for f in report["findings"]}["privileged-users"]
    assert found["status"] == "fail" and "legacy" in found["reason"]
    assert "parked" not in found["reason"]  # disabled users cannot log in
    assert "default" not in found["reason"]  # the ops user here


def test_the_generated_acl_passes(tmp_path):
    from tests.support.redis_servers import redis_server
    from upak.ops.conf import ConfOptions, generate

    generated = generate(ConfOptions(app_password=APP_PASSWORD, ops_password=ROOT_PASSWORD))
    acl = tmp_path / "users.acl"
    acl.write_text(generated.acl)
    with redis_server(config={"aclfile": str(acl), "maxmemory": "64mb"}) as server:
        env = {
            "REDIS_URL": f"redis://upak:{APP_PASSWORD}@127.0.0.1:{server.port}/0",
            "UPAK_OPS_USERNAME": "upak-ops",
            "UPAK_OPS_PASSWORD": ROOT_PASSWORD,
        }
        _, report = audit(env)
    found = statuses(report)
    for check in ("auth-required", "default-user", "app-user", "privileged-users"):
        assert found[check] == "pass", (check, report)
    assert found["dangerous-commands"] == "pass", report


def test_every_script_command_is_in_app_commands():
    # The generated ACL allows APP_COMMANDS and nothing else, and scripts run with the
    # caller's ACL: a script calling anything more would fail only in production.
    import re
    from pathlib import Path

    from upak.ops.conf import APP_COMMANDS

    source = Path(__file__).resolve().parents[2] / "src" / "upak"
    called = set()
    for path in source.rglob("*.py"):
        called |= {
            m.lower()
            for m in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]", path.read_text())
        }
    assert called and called <= set(APP_COMMANDS), called - set(APP_COMMANDS)

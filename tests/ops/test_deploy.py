"""deploy/: the systemd units pass `systemd-analyze verify`; the compose file runs
redis:7-alpine on the hardened config, which a real redis-server accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ops.conftest import run_cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UPAK_BIN = Path(sys.executable).with_name("upak")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_units_verify(tmp_path: Path):
    units = []
    for unit in (DEPLOY / "systemd").iterdir():
        # The units name the installed path; point them at this checkout's entry point.
        text = unit.read_text().replace("/opt/upak/.venv/bin/upak", str(UPAK_BIN))
        (tmp_path / unit.name).write_text(text)
        units.append(str(tmp_path / unit.name))
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    ours = [line for line in result.stderr.splitlines() if str(tmp_path) in line]
    assert result.returncode == 0 and not ours, result.stderr


SECURITY_SCORE_MAX = 2.5  # `systemd-analyze security`: 0 is best, 10 worst; <= 2.5 is "OK"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_unit_is_hardened(tmp_path: Path):
    unit = tmp_path / "upak.service"
    unit.write_text((DEPLOY / "systemd" / "upak.service").read_text())
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for upak.service: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= SECURITY_SCORE_MAX, result.stdout
    for setting in (
        "CapabilityBoundingSet=",
        "SystemCallFilter=",
        "SystemCallArchitectures=",
        "MemoryDenyWriteExecute=",
        "RestrictSUIDSGID=",
        "RestrictRealtime=",
        "ProtectClock=",
        "ProtectKernelLogs=",
        "ProtectHostname=",
        "PrivateMounts=",
        "RemoveIPC=",
        "UMask=",
    ):
        assert re.search(f"^{setting}", unit.read_text(), re.MULTILINE), setting


def test_compose_runs_the_service_and_hardened_redis(tmp_path: Path):
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7-alpine"
    assert "./redis/redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis["volumes"]
    assert "ports" not in redis  # only the app container reaches it
    app = compose["services"]["app"]
    assert app["build"]["dockerfile"] == "deploy/Dockerfile"
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert (DEPLOY / "Dockerfile").read_text().count("upak") >= 2

    # The compose redis.conf, with the ACL file `upak redis config` writes, starts a server.
    generated = run_cli("config", "--out", str(tmp_path / "secrets"))
    assert generated.exit_code == 0, generated.output
    conf = (DEPLOY / "redis" / "redis.conf").read_text()
    conf = re.sub(
        r"^aclfile .*$", f"aclfile {tmp_path / 'secrets' / 'users.acl'}", conf, flags=re.MULTILINE
    )
    assert "maxmemory-policy noeviction" in conf
    (tmp_path / "redis.conf").write_text(conf)
    checked = run_cli("config", "--check", str(tmp_path / "redis.conf"))
    assert checked.exit_code == 0, checked.output

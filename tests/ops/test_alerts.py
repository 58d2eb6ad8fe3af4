"""deploy/prometheus and deploy/grafana: the rules pass promtool's check and their own unit
tests, the dashboard's queries are valid PromQL, and every metric either names is one the
service (or the backup timer's file) really exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import make_settings
from tests.support.redis_servers import free_port
from upak.ops.backup import BackupResult, write_backup_metrics
from upak.web.app import create_app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "upak.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing (Debian: apt-get install prometheus; .ci/run does)"
)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    # Grafana's variables, as Grafana substitutes them for "All".
    return [t["expr"].replace("$instance", ".*") for p in panels for t in p["targets"]]


def alert_queries() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


@needs_promtool
def test_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", ALERTS.name, cwd=ALERTS.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yml", cwd=ALERTS.parent)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path):
    rules = [
        {"record": f"upak:dashboard_query_{n}", "expr": expr}
        for n, expr in enumerate(dashboard_queries())
    ]
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]})
    )
    checked = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def exposed_names(tmp_path: Path) -> set[str]:
    """Every sample name the service's /metrics and the backup's textfile show."""
    app = create_app(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/plans")  # HTTP series exist once a request was counted
            text = (await client.get("/metrics")).text
    prom = tmp_path / "backup.prom"
    write_backup_metrics(prom, BackupResult("p", 1, "s", "v", "file:x", 0.1), 1.0)
    text += prom.read_text()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


async def test_alerts_and_dashboard_name_only_exposed_metrics(tmp_path: Path):
    exposed = await exposed_names(tmp_path)
    named = set()
    for expr in alert_queries() + dashboard_queries():
        named |= set(re.findall(r"\bupak_[a-z_]+\b", expr))
    assert named, "no metric names found"
    assert named - exposed == set(), "alerts or dashboard name metrics nobody exposes"

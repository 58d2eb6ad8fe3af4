"""/metrics in one process: HTTP requests by route template, the database gauge."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import make_settings
from tests.support.metrics import sample
from tests.support.redis_servers import free_port
from upak.store import FailoverStore, MemoryStore
from upak.web.app import create_app
from upak.web.metrics import Metrics


@pytest.fixture
async def app_client() -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    app = create_app(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield app, client


async def test_requests_are_counted_by_route_template_and_status_class(app_client):
    _, client = app_client
    for _ in range(3):
        assert (await client.get("/plans")).status_code == 200
    for path in ("/nowhere/1", "/nowhere/2"):
        assert (await client.get(path)).status_code == 404
    await client.delete("/auth/sessions/abc")  # not logged in: a 4xx, by template
    await client.request("BREW", "/plans")  # clients choose methods: one label for the rest
    text = (await client.get("/metrics")).text
    requests = "upak_http_requests_total"
    assert sample(text, requests, method="GET", route="/plans", status="2xx", code="200") == 3
    assert sample(text, requests, method="GET", route="unmatched", status="4xx") == 2
    route = "/auth/sessions/{handle}"
    assert sample(text, requests, method="DELETE", route=route, status="4xx") == 1
    assert 'method="BREW"' not in text and sample(text, requests, method="OTHER") == 1
    count = "upak_http_request_duration_seconds_count"
    assert sample(text, count, method="GET", route="/plans") == 3
    assert "/nowhere" not in text


async def test_database_gauge_follows_the_breaker(tmp_path: Path):
    """The gauge is the breaker's state: a real failing call trips it, a passing check
    (the breaker's own background check, run here by hand) brings it back."""
    (tmp_path / "db").mkdir()
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/db/upak.db",
    )
    app = create_app(settings)
    services = app.state.services
    engine = services.db_engine

    async def ping() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            before = (await client.get("/metrics")).text
            assert sample(before, "upak_database_up") == 1.0  # the start-up migrations succeeded
            assert sample(before, "upak_database_outages_total") == 0.0
            # The database goes away: the next connection cannot open it.
            await engine.dispose()
            shutil.rmtree(tmp_path / "db")
            assert not await services.db_availability.check(ping)
            after = (await client.get("/metrics")).text
            assert sample(after, "upak_database_up") == 0.0
            assert sample(after, "upak_database_outages_total") == 1.0
            (tmp_path / "db").mkdir()  # back: the next passing check says so
            assert await services.db_availability.check(ping)
            back = (await client.get("/metrics")).text
            assert sample(back, "upak_database_up") == 1.0
            assert sample(back, "upak_database_outages_total") == 1.0


def test_a_dead_workers_gauges_leave_but_its_counts_stay(tmp_path, monkeypatch):
    """A worker killed without its shutdown left live gauges behind: they must not linger
    (a dead worker's memory mode would hold the fallback alert up forever)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    child = (
        "from prometheus_client import CollectorRegistry, Counter, Gauge\n"
        "r = CollectorRegistry()\n"
        "Gauge('upak_store_mode', 'm', ['mode'], registry=r, multiprocess_mode='livemax')"
        ".labels('memory').set(1)\n"
        "Counter('upak_store_fallback_calls', 'f', registry=r).inc(7)\n"
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
    assert list(tmp_path.glob("gauge_live*.db"))  # what the dead worker left
    text = Metrics(FailoverStore(None, MemoryStore())).render().decode()
    assert sample(text, "upak_store_mode", mode="memory") is None
    assert sample(text, "upak_store_fallback_calls_total") == 7.0
    assert not list(tmp_path.glob("gauge_live*.db"))

"""The web layer while the database is away: 503 problem+json with Retry-After, never a 500.

In process, on SQLite: one test opens the availability breaker by hand (what a refused or
hung PostgreSQL does, see tests/web/test_database_workers.py for the real thing), one makes
the database really unusable (another connection holds its write lock past the deadline).
Routes that need no database keep answering; `/me` is served from its cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.support.webhooks import SECRET, notification, signed_headers
from tests.web.test_auth import PASSWORD, Build, build, client_of, clock  # noqa: F401 (fixtures)
from upak.domain.db import make_engine


@pytest.fixture
def on_file(build: Build, tmp_path: Path) -> Build:  # noqa: F811
    """test_auth's apps, on a database file (a second connection can lock it) and with the
    webhook secret set."""

    async def make(**overrides: Any) -> FastAPI:
        database = {"database_url": f"sqlite+aiosqlite:///{tmp_path}/upak.db"}
        return await build(**database, webhook_secret=SECRET, **overrides)

    return make


async def logged_in(app: FastAPI, email: str) -> tuple[httpx.AsyncClient, int]:
    client = client_of(app)
    registered = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    response = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return client, int(response.json()["id"])


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["title"] == "Database temporarily unavailable"


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.02)


async def test_every_route_that_needs_the_database_answers_503_and_the_rest_keep_working(
    on_file: Build, caplog: pytest.LogCaptureFixture
) -> None:
    # A long check interval: the breaker stays open until the test closes it.
    app = await on_file(database_health_interval=60)
    availability = app.state.services.db_availability
    await until(lambda: availability.checks >= 1)
    cached, cached_id = await logged_in(app, "cached@example.com")
    uncached, _ = await logged_in(app, "uncached@example.com")
    assert (await cached.get("/me")).status_code == 200  # now in the cache
    anonymous = client_of(app)
    body = notification(user_id=cached_id)
    headers = signed_headers(body, at=time.time())

    availability.trip("refused for the test")
    assert_unavailable(
        await anonymous.post(
            "/auth/register", json={"email": "n@example.com", "password": PASSWORD}
        )
    )
    assert_unavailable(
        await anonymous.post(
            "/auth/login", json={"email": "cached@example.com", "password": PASSWORD}
        )
    )
    assert_unavailable(await uncached.get("/me"))  # not cached: it needs the database
    assert_unavailable(await cached.get("/payments"))
    assert_unavailable(
        await cached.post(
            "/auth/password", json={"current_password": PASSWORD, "new_password": PASSWORD + "!"}
        )
    )
    with caplog.at_level(logging.WARNING, logger="upak"):
        webhook = await anonymous.post("/webhooks/upak", content=body, headers=headers)
    assert_unavailable(webhook)  # the sender retries
    # One line, no traceback: an outage would otherwise log one per delivery.
    assert [r.exc_info for r in caplog.records if r.exc_info] == []
    assert any("database unavailable" in r.getMessage() for r in caplog.records)
    # What needs no database still answers: the cached /me, sessions (Redis), the catalogue.
    me = await cached.get("/me")
    assert me.status_code == 200 and me.json()["id"] == cached_id
    assert (await cached.get("/auth/sessions")).status_code == 200
    assert (await anonymous.get("/plans")).status_code == 200
    health = (await anonymous.get("/health")).json()
    assert health["database"] == "down" and health["status"] == "degraded"
    assert health["database_reason"] == "refused for the test"

    availability.restore()
    # The claim was released: the sender's retry of the same delivery is processed, once.
    retried = await anonymous.post("/webhooks/upak", content=body, headers=headers)
    assert retried.json() == {"status": "processed"}, retried.text
    again = await anonymous.post("/webhooks/upak", content=body, headers=headers)
    assert again.json() == {"status": "duplicate"}
    assert (await uncached.get("/me")).status_code == 200
    health = (await anonymous.get("/health")).json()
    assert health["database"] == "ok" and "database_reason" not in health
    for client in (cached, uncached, anonymous):
        await client.aclose()


async def test_a_lock_held_past_the_deadline_is_a_503_and_the_service_recovers_by_itself(
    on_file: Build, tmp_path: Path
) -> None:
    app = await on_file(database_statement_timeout=0.3, database_health_interval=0.1)
    availability = app.state.services.db_availability
    client = client_of(app)
    holder = make_engine(f"sqlite+aiosqlite:///{tmp_path}/upak.db")
    try:
        async with holder.connect() as connection:
            await connection.exec_driver_sql("BEGIN IMMEDIATE")  # another process writing
            await connection.execute(text("DELETE FROM users"))
            started = time.monotonic()
            response = await client.post(
                "/auth/register", json={"email": "late@example.com", "password": PASSWORD}
            )
            assert_unavailable(response)
            assert time.monotonic() - started < 5
            # A lock is this call's contention: the worker's other requests are not refused.
            assert not availability.down
            await connection.rollback()
        await until(lambda: availability.state == "ok")
        response = await client.post(
            "/auth/register", json={"email": "late@example.com", "password": PASSWORD}
        )
        assert response.status_code == 201, response.text
    finally:
        await holder.dispose()
        await client.aclose()

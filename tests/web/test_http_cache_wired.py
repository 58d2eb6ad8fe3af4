"""The cache wired into the service: GET /plans with 304s, and payments invalidating per-user
reads at once (a stand-in /me route until the accounts issue's /me lands)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer
from tests.support.webhooks import SECRET, create_database, notification, signed_headers
from upak.domain.billing import as_utc
from upak.domain.models import User
from upak.web.app import create_app
from upak.web.http_cache import PRIVATE_CACHE_CONTROL, private_json
from upak.web.routes.plans import PLANS_MAX_AGE

NOW = time.time()


def add_me_route(app: FastAPI) -> None:
    @app.get("/t/me/{user_id}")
    async def me(request: Request, user_id: int) -> Response:
        services = request.app.state.services

        async def load() -> dict[str, Any]:
            async with services.db() as session:
                user = await session.get(User, user_id)
                expires = user.subscription_expires_at
            return {"id": user_id, "expires": as_utc(expires).isoformat() if expires else None}

        return await private_json(request, services.cache, user_id, "me", load)


@pytest.fixture
async def app(tmp_path: Path, shared_redis: RedisServer, key_prefix: str) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        redis_url=shared_redis.url,
        redis_key_prefix=key_prefix,
        database_url=create_database(str(tmp_path / "upak.db"), users=2),
        webhook_secret=SECRET,
    )
    app = create_app(settings, clock=lambda: NOW)
    add_me_route(app)
    async with app.router.lifespan_context(app):
        yield app


def client_of(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_plans_is_public_cached_with_etag_and_304(app: FastAPI) -> None:
    async with client_of(app) as client:
        first = await client.get("/plans")
        assert first.status_code == 200 and [p["id"] for p in first.json()] == ["start", "pro"]
        assert first.headers["cache-control"] == f"public, max-age={PLANS_MAX_AGE}"
        etag = first.headers["etag"]
        again = await client.get("/plans", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == f"public, max-age={PLANS_MAX_AGE}"
    stats = app.state.services.cache.stats
    assert stats.computes == 1 and stats.hits == 1


async def test_a_processed_payment_shows_in_the_users_cached_read_at_once(app: FastAPI) -> None:
    async with client_of(app) as client:
        before = await client.get("/t/me/1")
        assert before.json()["expires"] is None
        assert before.headers["cache-control"] == PRIVATE_CACHE_CONTROL
        etag = before.headers["etag"]
        assert (await client.get("/t/me/1", headers={"If-None-Match": etag})).status_code == 304
        other = (await client.get("/t/me/2")).headers["etag"]

        body = notification(user_id=1, plan="start")
        paid = await client.post(
            "/webhooks/upak", content=body, headers=signed_headers(body, at=NOW)
        )
        assert paid.json() == {"status": "processed"}

        after = await client.get("/t/me/1", headers={"If-None-Match": etag})
        assert after.status_code == 200  # not the old copy: neither ours nor the browser's
        expected = datetime.fromtimestamp(NOW, UTC) + timedelta(days=30)
        assert datetime.fromisoformat(after.json()["expires"]) == expected
        # Only that user's entries went.
        assert (await client.get("/t/me/2", headers={"If-None-Match": other})).status_code == 304


async def test_real_me_is_cached_privately_and_follows_a_payment(app: FastAPI) -> None:
    async with client_of(app) as client:
        credentials = {"email": "buyer@example.com", "password": "correct horse battery"}
        assert (await client.post("/auth/register", json=credentials)).status_code == 201
        login = await client.post("/auth/login", json=credentials)
        user_id = login.json()["id"]
        first = await client.get("/me")
        assert first.status_code == 200 and first.json()["subscription_expires_at"] is None
        assert first.headers["cache-control"] == PRIVATE_CACHE_CONTROL
        etag = first.headers["etag"]
        assert (await client.get("/me", headers={"If-None-Match": etag})).status_code == 304

        body = notification(user_id=user_id, plan="start")
        paid = await client.post(
            "/webhooks/upak", content=body, headers=signed_headers(body, at=NOW)
        )
        assert paid.json() == {"status": "processed"}

        after = await client.get("/me", headers={"If-None-Match": etag})
        assert after.status_code == 200 and after.json()["plan"] == "start"
        expected = datetime.fromtimestamp(NOW, UTC) + timedelta(days=30)
        assert datetime.fromisoformat(after.json()["subscription_expires_at"]) == expected
    stats = app.state.services.cache.stats
    assert stats.hits >= 1

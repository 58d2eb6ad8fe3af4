"""Accounts and sessions end to end over HTTP: the real app, a real Redis, an injected clock."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import make_settings
from tests.features.test_sessions import Clock
from tests.support.redis_servers import RedisServer
from upak.domain.passwords import fast_passwords_for_tests
from upak.web.app import create_app

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a new pass phrase 1"


@pytest.fixture
def clock() -> Clock:
    return Clock()


Build = Callable[..., Awaitable[FastAPI]]


@pytest.fixture
async def build(shared_redis: RedisServer, key_prefix: str, clock: Clock) -> AsyncIterator[Build]:
    contexts = []

    async def make(**overrides: Any) -> FastAPI:
        settings = {"redis_url": shared_redis.url, "redis_key_prefix": key_prefix, **overrides}
        app = create_app(
            make_settings(**settings), clock=clock, passwords=fast_passwords_for_tests()
        )
        context = app.router.lifespan_context(app)
        await context.__aenter__()
        contexts.append(context)
        return app

    yield make
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)


@pytest.fixture
async def app(build: Build) -> FastAPI:
    return await build()


def client_of(
    app: FastAPI, base_url: str = "http://testserver", **kwargs: Any
) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url, **kwargs)


def client_with(app: FastAPI, cookie: str | None) -> httpx.AsyncClient:
    """A client holding `cookie` as the session cookie, as a browser would for this host."""
    client = client_of(app)
    assert cookie is not None
    client.cookies.set("upak_session", cookie, domain="testserver.local")
    return client


async def register(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> None:
    response = await client.post("/auth/register", json={"email": email, "password": password})
    assert response.status_code == 201, response.text


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    response = await client.post("/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return response


def session_cookie(client: httpx.AsyncClient, name: str = "upak_session") -> str | None:
    return client.cookies.get(name)


# --- the journey ---


async def test_register_login_me_list_revoke(app: FastAPI) -> None:
    async with client_of(app, headers={"User-Agent": "journey/1"}) as client:
        await register(client, "Ann@Example.com")
        # Identity case-folds the whole address; the display keeps the user's spelling.
        response = await login(client, "ANN@example.COM")
        user_id = response.json()["id"]
        assert response.json() == {"id": user_id, "email": "Ann@example.com"}
        me = await client.get("/me")
        assert me.status_code == 200
        assert me.json() == {
            "id": user_id,
            "email": "Ann@example.com",
            "plan": None,
            "subscription_expires_at": None,
        }
        listed = (await client.get("/auth/sessions")).json()
        assert len(listed) == 1
        (only,) = listed
        assert only["current"] is True and only["user_agent"] == "journey/1"
        assert only["id"] not in session_cookie(client)  # a handle, not the cookie value
        assert set(only) == {"id", "created_at", "last_seen_at", "ip", "user_agent", "current"}
        assert (await client.delete(f"/auth/sessions/{only['id']}")).status_code == 204
        gone = await client.get("/me")
        assert gone.status_code == 401
        assert gone.headers["content-type"] == "application/problem+json"


async def test_two_clients_one_revokes_the_other(app: FastAPI) -> None:
    async with client_of(app) as phone, client_of(app) as laptop:
        await register(phone, "two@example.com")
        await login(phone, "two@example.com")
        await login(laptop, "two@example.com")
        listed = (await phone.get("/auth/sessions")).json()
        assert len(listed) == 2
        (laptop_session,) = [s for s in listed if not s["current"]]
        assert (await phone.delete(f"/auth/sessions/{laptop_session['id']}")).status_code == 204
        assert (await laptop.get("/me")).status_code == 401
        assert (await phone.get("/me")).status_code == 200


async def test_revoke_all_others_and_someone_elses_handle(app: FastAPI) -> None:
    a1, a2, a3, other = (client_of(app) for _ in range(4))
    async with a1, a2, a3, other:
        await register(a1, "many@example.com")
        await register(other, "other@example.com")
        for each in (a1, a2, a3):
            await login(each, "many@example.com")
        await login(other, "other@example.com")
        theirs = (await other.get("/auth/sessions")).json()[0]["id"]
        assert (await a1.delete(f"/auth/sessions/{theirs}")).status_code == 404
        assert (await a1.delete("/auth/sessions/not-a-handle")).status_code == 404
        assert (await other.get("/me")).status_code == 200
        assert (await a1.delete("/auth/sessions")).status_code == 204
        assert [(await c.get("/me")).status_code for c in (a1, a2, a3)] == [200, 401, 401]
        assert len((await a1.get("/auth/sessions")).json()) == 1


async def test_password_change_revokes_the_other_sessions(app: FastAPI) -> None:
    async with client_of(app) as mine, client_of(app) as stolen:
        await register(mine, "pw@example.com")
        await login(mine, "pw@example.com")
        await login(stolen, "pw@example.com")
        wrong = await mine.post(
            "/auth/password", json={"current_password": "nope nope", "new_password": NEW_PASSWORD}
        )
        assert wrong.status_code == 403
        assert (await stolen.get("/me")).status_code == 200
        before = session_cookie(mine)
        changed = await mine.post(
            "/auth/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}
        )
        assert changed.status_code == 204
        # The session id rotates, as at login: a new cookie, and the old one is dead.
        assert "upak_session=" in changed.headers["set-cookie"]
        assert session_cookie(mine) != before
        assert (await mine.get("/me")).status_code == 200
        assert len((await mine.get("/auth/sessions")).json()) == 1
        assert (await stolen.get("/me")).status_code == 401
    async with client_with(app, before) as old:
        assert (await old.get("/me")).status_code == 401
    async with client_of(app) as fresh:
        bad = await fresh.post(
            "/auth/login", json={"email": "pw@example.com", "password": PASSWORD}
        )
        assert bad.status_code == 401
        await login(fresh, "pw@example.com", NEW_PASSWORD)


async def test_logout(app: FastAPI) -> None:
    async with client_of(app) as client:
        await register(client, "out@example.com")
        await login(client, "out@example.com")
        value = session_cookie(client)
        response = await client.post("/auth/logout")
        assert response.status_code == 204
        assert response.headers["cache-control"] == "no-store"
        assert "Max-Age=0" in response.headers["set-cookie"]
        assert session_cookie(client) is None
    async with client_with(app, value) as replay:
        assert (await replay.get("/me")).status_code == 401  # dead server-side, not just cleared
        assert (await replay.post("/auth/logout")).status_code == 204  # idempotent


# --- cookies, ids ---


async def test_cookie_attributes_in_development(app: FastAPI) -> None:
    async with client_of(app) as client:
        await register(client, "dev@example.com")
        response = await login(client, "dev@example.com")
    header = response.headers["set-cookie"]
    assert header.startswith("upak_session=")
    for attribute in ("HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=2592000"):
        assert attribute in header
    assert "Secure" not in header
    assert response.headers["cache-control"] == "no-store"


async def test_cookie_attributes_in_production(build: Build) -> None:
    app = await build(upak_env="production")
    async with client_of(app, base_url="https://api.test") as client:
        await register(client, "prod@example.com")
        response = await login(client, "prod@example.com")
        header = response.headers["set-cookie"]
        assert header.startswith("__Host-upak_session=")
        assert "; Secure" in header and "Domain" not in header and "Path=/" in header
        assert (await client.get("/me")).status_code == 200


async def test_login_issues_a_new_id_and_ends_the_old_one(app: FastAPI) -> None:
    async with client_of(app) as client:
        await register(client, "fix@example.com")
        await login(client, "fix@example.com")
        first = session_cookie(client)
        await login(client, "fix@example.com")
        second = session_cookie(client)
        assert first != second
        assert len((await client.get("/auth/sessions")).json()) == 1
    async with client_with(app, first) as old:
        assert (await old.get("/me")).status_code == 401


async def test_an_id_the_server_did_not_issue_is_never_adopted(app: FastAPI) -> None:
    async with client_of(app) as setup:
        await register(setup, "adopt@example.com")
        user_id = (await login(setup, "adopt@example.com")).json()["id"]
    planted = f"{user_id}.{secrets.token_urlsafe(32)}"
    async with client_with(app, planted) as client:
        refused = await client.get("/me")
        assert refused.status_code == 401
        assert "ended" in refused.json()["title"]
        assert "Max-Age=0" in refused.headers["set-cookie"]  # the bad cookie is cleared
        await login(client, "adopt@example.com")
        assert session_cookie(client) != planted
        assert (await client.get("/me")).status_code == 200


@pytest.mark.parametrize(
    "cookie",
    ["garbage", "1.short", "1." + "a" * 43 + "b", "-1." + "a" * 43, "1." + "é" * 43, "x" * 4000],
)
async def test_malformed_cookies_are_401(app: FastAPI, cookie: str) -> None:
    async with client_of(app) as client:
        header = f"upak_session={cookie}".encode()  # raw bytes: non-ASCII included
        response = await client.get("/me", headers={"Cookie": header})
    assert response.status_code == 401
    assert "malformed" in response.json()["title"]


async def test_an_oversized_cookie_header_is_4xx(app: FastAPI) -> None:
    async with client_of(app) as client:
        await register(client, "big@example.com")
        await login(client, "big@example.com")
        value = session_cookie(client)
        headers = {"Cookie": f"upak_session={value}; junk={'x' * 9000}"}
        response = await client.get("/me", headers=headers)
    assert response.status_code == 401
    assert "malformed" in response.json()["title"]


async def test_no_cookie_is_401_without_clearing_anything(app: FastAPI) -> None:
    async with client_of(app) as client:
        response = await client.get("/me")
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
        assert (await client.get("/auth/sessions")).status_code == 401
        assert (await client.delete("/auth/sessions")).status_code == 401


# --- input ---


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"email": "not-an-email", "password": PASSWORD}, 422, "email"),
        ({"email": "a@example.com", "password": "short"}, 422, "password"),
        ({"email": "a@example.com", "password": "x" * 1025}, 422, "password"),
        ({"email": 42, "password": PASSWORD}, 422, "email"),
        ({"email": "a@example.com", "password": ["list"]}, 422, "password"),
        ({"email": "a@example.com"}, 422, "password"),
        ([1, 2], 422, "body"),
    ],
)
async def test_register_refuses_bad_input(app: FastAPI, body: Any, status: int, field: str) -> None:
    async with client_of(app) as client:
        response = await client.post("/auth/register", json=body)
    assert response.status_code == status
    assert field in {e["field"] for e in response.json()["errors"]}
    assert PASSWORD not in response.text


async def test_registering_a_taken_email_answers_as_a_free_one(app: FastAPI) -> None:
    async with client_of(app) as client:
        await register(client, "dup@example.com")
        taken = await client.post(
            "/auth/register", json={"email": "Dup@EXAMPLE.COM", "password": "someone else's 1"}
        )
        free = await client.post(
            "/auth/register", json={"email": "Fresh@EXAMPLE.COM", "password": "someone else's 1"}
        )
        assert taken.status_code == free.status_code == 201
        assert set(taken.json()) == set(free.json()) == {"email", "detail"}
        assert taken.json()["detail"] == free.json()["detail"]
        assert taken.json()["email"] == "Dup@example.com"  # the domain is lower-cased
        # Nothing changed for the owner: the old password works, the new one does not.
        await login(client, "dup@example.com")
        stranger = await client.post(
            "/auth/login", json={"email": "dup@example.com", "password": "someone else's 1"}
        )
        assert stranger.status_code == 401


@pytest.mark.parametrize("path", ["/auth/register", "/auth/login", "/auth/password"])
async def test_broken_bodies_are_4xx_and_change_nothing(app: FastAPI, path: str) -> None:
    async with client_of(app) as client:
        await register(client, "body@example.com")
        await login(client, "body@example.com")
        bad_json = await client.post(
            path, content=b'{"email": ', headers={"Content-Type": "application/json"}
        )
        assert bad_json.status_code == 400
        huge = await client.post(
            path,
            content=b'{"email": "' + b"x" * (64 * 1024) + b'"}',
            headers={"Content-Type": "application/json"},
        )
        assert huge.status_code == 413
        assert len((await client.get("/auth/sessions")).json()) == 1
        assert (await client.get("/me")).status_code == 200


async def test_failed_logins_say_the_same_thing(app: FastAPI) -> None:
    async with client_of(app) as client:
        await register(client, "same@example.com")
        wrong = await client.post(
            "/auth/login", json={"email": "same@example.com", "password": "wrong password"}
        )
        unknown = await client.post(
            "/auth/login", json={"email": "nobody@example.com", "password": PASSWORD}
        )
        nonsense = await client.post("/auth/login", json={"email": "zzz", "password": "x"})
    assert wrong.status_code == unknown.status_code == nonsense.status_code == 401
    assert wrong.json() == unknown.json() == nonsense.json()
    assert "set-cookie" not in wrong.headers


# --- origin / CORS ---


async def test_state_changes_from_other_origins_are_403(build: Build) -> None:
    app = await build(cors_origins="https://app.upak.example, http://localhost:5173")
    async with client_of(app) as client:
        await register(client, "cors@example.com")
        body = {"email": "cors@example.com", "password": PASSWORD}
        evil = await client.post("/auth/login", json=body, headers={"Origin": "https://evil.test"})
        assert evil.status_code == 403
        assert session_cookie(client) is None
        null = await client.post("/auth/login", json=body, headers={"Origin": "null"})
        assert null.status_code == 403
        for origin in ("https://app.upak.example", "http://localhost:5173", "http://testserver"):
            ok = await client.post("/auth/login", json=body, headers={"Origin": origin})
            assert ok.status_code == 200, origin
        assert (await client.get("/me", headers={"Origin": "https://evil.test"})).status_code == 200
        assert (
            await client.post("/auth/logout", headers={"Origin": "https://evil.test"})
        ).status_code == 403
        assert (await client.get("/me")).status_code == 200
        preflight = await client.options(
            "/auth/login",
            headers={
                "Origin": "https://app.upak.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.upak.example"
        assert preflight.headers["access-control-allow-credentials"] == "true"
        simple = await client.get("/me", headers={"Origin": "https://evil.test"})
        assert "access-control-allow-origin" not in simple.headers


# --- concurrency and time ---


async def test_logout_racing_50_requests_never_resurrects(app: FastAPI, clock: Clock) -> None:
    async with client_of(app) as client:
        await register(client, "race@example.com")
        await login(client, "race@example.com")
        value = session_cookie(client)
        clock.advance(120)  # every request below also renews the session (a write)
        requests = [client.get("/me") for _ in range(50)]
        requests.insert(25, client.post("/auth/logout"))
        responses = await asyncio.gather(*requests)
        assert all(r.status_code in (200, 204, 401) for r in responses)
        assert (await client.get("/auth/sessions")).status_code == 401
    async with client_with(app, value) as again:
        assert (await again.get("/me")).status_code == 401
        assert (await again.get("/me")).status_code == 401
    redis = app.state.services.store.redis.client
    prefix = app.state.services.settings.redis_key_prefix
    assert [k async for k in redis.scan_iter(match=prefix + "sessions:*:s:*")] == []


async def test_idle_timeout(build: Build, clock: Clock) -> None:
    app = await build(session_idle_timeout=600, session_max_age=3600)
    async with client_of(app) as client:
        await register(client, "idle@example.com")
        await login(client, "idle@example.com")
        clock.advance(590)
        assert (await client.get("/me")).status_code == 200  # used: renewed
        clock.advance(590)
        assert (await client.get("/me")).status_code == 200
        clock.advance(601)
        response = await client.get("/me")
        assert response.status_code == 401 and "ended" in response.json()["title"]


async def test_absolute_timeout(build: Build, clock: Clock) -> None:
    app = await build(session_idle_timeout=600, session_max_age=3600)
    async with client_of(app) as client:
        await register(client, "abs@example.com")
        await login(client, "abs@example.com")
        for _ in range(6):
            clock.advance(590)
            assert (await client.get("/me")).status_code == 200
        clock.advance(70)  # 3610 s after login, used 70 s ago
        assert (await client.get("/me")).status_code == 401


# --- hygiene ---


async def test_no_secret_reaches_the_logs(app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with client_of(app) as client:
        await register(client, "log@example.com")
        await login(client, "log@example.com")
        value = session_cookie(client)
        await client.get("/me")
        await client.post("/auth/login", json={"email": "log@example.com", "password": "nope!"})
        await client.post("/auth/logout")
    assert value is not None
    token = value.split(".", 1)[1]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD not in text and token not in text and "nope!" not in text


async def test_me_after_the_account_is_gone_is_401(app: FastAPI) -> None:
    from upak.domain.models import User

    async with client_of(app) as client:
        await register(client, "gone@example.com")
        user_id = (await login(client, "gone@example.com")).json()["id"]
        async with app.state.services.db() as db:
            await db.delete(await db.get(User, user_id))
            await db.commit()
        response = await client.get("/me")
    assert response.status_code == 401


async def test_payments_use_the_session(app: FastAPI) -> None:
    async with client_of(app) as client:
        assert (await client.get("/payments")).status_code == 401
        await register(client, "pay@example.com")
        await login(client, "pay@example.com")
        response = await client.get("/payments")
    assert response.status_code == 200 and response.json() == []


async def test_a_flood_of_password_checks_gets_503_at_once(build: Build) -> None:
    import threading
    import time

    from upak.domain.passwords import fast_passwords_for_tests

    app = await build()
    passwords = fast_passwords_for_tests(max_concurrency=1, max_waiting=0)
    app.state.services.passwords = passwords
    release = threading.Event()
    busy = asyncio.ensure_future(passwords._in_thread(release.wait, 30))
    try:
        await asyncio.sleep(0.05)
        async with client_of(app) as client:
            started = time.monotonic()
            refused = await client.post(
                "/auth/login", json={"email": "flood@example.com", "password": PASSWORD}
            )
            assert time.monotonic() - started < 2  # promptly, not after the queue drains
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.headers["content-type"] == "application/problem+json"
            release.set()
            await busy
            assert (
                await client.post(
                    "/auth/login", json={"email": "flood@example.com", "password": PASSWORD}
                )
            ).status_code == 401
    finally:
        release.set()

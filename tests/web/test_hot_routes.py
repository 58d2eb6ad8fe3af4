"""Hot routes (`upak.web.hot_routes`): GET /plans and /me answered before FastAPI's routing
must answer exactly what their declared FastAPI routes answer, and leave everything else to
the router."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from tests.web.test_auth import (
    Build,
    build,
    client_of,
    client_with,
    clock,
    login,
    register,
    session_cookie,
)
from upak.web.hot_routes import HotRoutes, install_hot_routes

__all__ = ["build", "clock"]  # fixtures shared with the auth tests

EMAIL = "hot@example.com"


def declared_routes_only(app: FastAPI) -> None:
    """Take the hot routes out: requests go through FastAPI's routing to the declared routes."""
    (hot,) = [m for m in app.user_middleware if m.cls is HotRoutes]
    app.user_middleware.remove(hot)
    app.middleware_stack = None  # rebuilt at the next request, without it


def answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return response.status_code, list(response.headers.multi_items()), response.content


async def answers(client: httpx.AsyncClient, etag: str | None) -> list[Any]:
    """Every case the two routes have: 200, 304, HEAD, each route; /me as its caller sees it."""
    results = []
    for path in ("/plans", "/me"):
        results.append(answer(await client.get(path)))
        results.append(answer(await client.head(path)))
    results.append(answer(await client.get("/me", headers={"If-None-Match": etag or ""})))
    return results


@pytest.mark.parametrize("logged_in", [True, False])
async def test_hot_routes_answer_what_the_declared_routes_answer(
    build: Build, logged_in: bool
) -> None:
    # Without rate limiting: its RateLimit field counts down between the two runs.
    app = await build(rate_limit_enabled=False)
    async with client_of(app) as client:
        if logged_in:
            await register(client, EMAIL)
            await login(client, EMAIL)
        etag = (await client.get("/me")).headers.get("etag")
        hot = await answers(client, etag)
        declared_routes_only(app)
        declared = await answers(client, etag)
    assert hot == declared
    statuses = [status for status, _, _ in hot]
    assert statuses == ([200, 200, 200, 200, 304] if logged_in else [200, 200, 401, 401, 401])


def masked_count(result: tuple[int, list[tuple[str, str]], bytes]) -> Any:
    """An answer with the RateLimit field's value masked (it counts down request by request)."""
    status, headers, body = result
    return status, [(k, "…" if k == "ratelimit" else v) for k, v in headers], body


@pytest.mark.parametrize("logged_in", [True, False])
async def test_hot_answers_carry_the_rate_limit_fields_where_the_routes_do(
    build: Build, logged_in: bool
) -> None:
    """The limiter leaves its fields in the scope for RequestGuard's one `send` wrapper: a hot
    answer carries them as the declared route's answer does, last, 304s and 401s included."""
    app = await build()
    async with client_of(app) as client:
        if logged_in:
            await register(client, EMAIL)
            await login(client, EMAIL)
        etag = (await client.get("/me")).headers.get("etag")
        hot = await answers(client, etag)
        declared_routes_only(app)
        declared = await answers(client, etag)
    for h, d in zip(hot, declared, strict=True):
        assert masked_count(h)[1] == masked_count(d)[1]
    for _, headers, _ in hot:
        assert [name for name, _ in headers][-2:] == ["ratelimit-policy", "ratelimit"]


async def test_a_session_cookie_that_ended_is_cleared_as_before(build: Build) -> None:
    app = await build()
    async with client_of(app) as client:
        await register(client, EMAIL)
        await login(client, EMAIL)
        cookie = session_cookie(client)
        assert (await client.post("/auth/logout")).status_code == 204
    async with client_with(app, cookie) as client:
        response = await client.get("/me")
    assert response.status_code == 401 and "ended" in response.json()["title"]
    assert response.headers["content-type"] == "application/problem+json"
    assert "Max-Age=0" in response.headers["set-cookie"]


async def test_other_methods_and_paths_still_go_through_the_router(build: Build) -> None:
    app = await build()
    async with client_of(app) as client:
        refused = await client.post("/plans")
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
        assert (await client.get("/plans/")).status_code in (307, 404)
        assert (await client.get("/health")).status_code == 200


async def test_metrics_label_a_hot_request_by_its_route(build: Build) -> None:
    app = await build()
    async with client_of(app) as client:
        await client.get("/plans")
        text = (await client.get("/metrics")).text
    assert 'route="/plans"' in text


def test_only_declared_static_get_routes_can_be_hot() -> None:
    app = FastAPI()

    @app.post("/only-post")
    async def only_post() -> None: ...

    async def endpoint(scope: Any) -> Any: ...

    for path in ("/nowhere", "/only-post"):
        with pytest.raises(ValueError, match="not a declared static GET route"):
            install_hot_routes(app, {path: endpoint})

    @app.get("/fine")
    async def fine() -> None: ...

    app.add_middleware(HotRoutes, fastapi=app, routes={})
    with pytest.raises(ValueError, match="innermost"):
        install_hot_routes(app, {"/fine": endpoint})


class Refused(Exception):
    pass


class RefusedSlowly(Refused):
    pass


async def test_what_a_hot_endpoint_raises_gets_the_apps_handler() -> None:
    app = FastAPI()

    @app.get("/hot")
    async def declared() -> None: ...

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"refused": type(exc).__name__}, status_code=409)

    @app.exception_handler(418)
    def teapot(request: Request, exc: Exception) -> JSONResponse:  # sync: run in a thread
        return JSONResponse({"teapot": True}, status_code=418)

    raised: list[Exception] = []

    async def endpoint(scope: Any) -> Any:
        raise raised[0]

    install_hot_routes(app, {"/hot": endpoint})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    ) as client:
        for exc, status, body in [
            (RefusedSlowly(), 409, {"refused": "RefusedSlowly"}),  # nearest class in the MRO
            (HTTPException(418), 418, {"teapot": True}),  # a status code's handler first
            (HTTPException(404, "Nope"), 404, {"detail": "Nope"}),  # FastAPI's own
            (KeyError("unhandled"), 500, None),  # to ServerErrorMiddleware, as any route's
        ]:
            raised[:] = [exc]
            response = await client.get("/hot")
            assert response.status_code == status
            if body is not None:
                assert response.json() == body


def recording_store_calls(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The app's store calls as they start and end ("+cache_read", "-sessions.resolve")."""
    store = app.state.services.store
    run, events = store.run, []

    async def recorded(op: Any, keys: Any, args: Any) -> Any:
        events.append("+" + op.name)
        try:
            return await run(op, keys, args)
        finally:
            events.append("-" + op.name)

    monkeypatch.setattr(store, "run", recorded)
    return events


async def test_the_plans_read_travels_with_the_session_lookup(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await build()
    async with client_of(app) as client:
        await register(client, EMAIL)
        await login(client, EMAIL)
        await client.get("/plans")  # the catalogue is cached
        events = recording_store_calls(app, monkeypatch)
        for method in ("GET", "HEAD"):
            events.clear()
            response = await client.request(method, "/plans")
            assert response.status_code == 200
            # Started before the session lookup was answered, and not read again after.
            assert events.index("+cache_read") < events.index("-sessions.resolve")
            assert events.count("+cache_read") == 2  # the entry and its tag, once
    assert app.state.services.cache.stats.hits == 2


async def writes_per_request(app: FastAPI, path: str) -> tuple[list[int], int]:
    """Logged in, `path` requested once (cached, the session touched), then a GET and a
    HEAD of it: how many writes to Redis each of those two made (each answered 200), and
    how many cache hits the two made."""
    async with client_of(app) as client:
        await register(client, EMAIL)
        await login(client, EMAIL)
        await client.get(path)
        wire = app.state.services.store.redis._wire
        hits = app.state.services.cache.stats.hits
        writes = []
        for method in ("GET", "HEAD"):
            before = wire.writes
            response = await client.request(method, path)
            assert response.status_code == 200
            writes.append(wire.writes - before)
    return writes, app.state.services.cache.stats.hits - hits


async def test_the_plans_read_leaves_in_the_session_lookups_write(build: Build) -> None:
    """A logged-in GET /plans writes to Redis twice: the session lookup with the catalogue's
    entry and tag reads, then the rate-limit decision (keyed by the session's user)."""
    app = await build()
    writes, _ = await writes_per_request(app, "/plans")
    assert writes == [2, 2]


async def test_the_me_read_leaves_in_the_session_lookups_write(build: Build) -> None:
    """A logged-in GET /me writes to Redis twice too: its cached document's read (for the
    user the cookie names) goes with the session lookup, the rate-limit decision after."""
    app = await build()
    writes, hits = await writes_per_request(app, "/me")
    assert writes == [2, 2]
    assert hits == 2


async def test_a_me_read_for_a_cookie_that_names_no_session_is_dropped(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read starts for the user a cookie names before the session is confirmed: a cookie
    naming a real user with a token of nobody's gets the 401, and the read counts nothing."""
    app = await build()
    stats = app.state.services.cache.stats
    async with client_of(app) as client:
        await register(client, EMAIL)
        await login(client, EMAIL)
        assert (await client.get("/me")).status_code == 200  # user's document cached
        user_id = session_cookie(client).split(".")[0]  # type: ignore[union-attr]
    counted = stats.as_dict()
    events = recording_store_calls(app, monkeypatch)
    async with client_with(app, f"{user_id}.{'A' * 43}") as forged:
        response = await forged.get("/me")
    assert "+cache_read" in events  # started with the lookup, then dropped
    assert response.status_code == 401 and "etag" not in response.headers
    assert stats.as_dict() == counted


async def test_a_refused_request_drops_its_read_uncounted(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await build(rate_limit_default="1/minute")
    stats = app.state.services.cache.stats
    async with client_of(app) as client:
        assert (await client.get("/plans")).status_code == 200  # computed and cached
        counted = stats.as_dict()
        events = recording_store_calls(app, monkeypatch)
        refused = await client.get("/plans")
    assert "+cache_read" in events  # the read was made ahead, then dropped
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["status"] == 429 and "etag" not in refused.headers
    assert stats.as_dict() == counted  # no hit, no miss: the read was never used

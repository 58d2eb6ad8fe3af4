"""HTTP caching helpers on small routes of the test's own, in a real app on a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer
from upak.features.cache import pack_entry
from upak.web.app import create_app
from upak.web.http_cache import (
    PRIVATE_CACHE_CONTROL,
    Representation,
    RepresentationAnswers,
    if_none_match,
    private_json,
    public_cache_control,
    public_json,
    render_json,
    represent_json,
    strong_etag,
)

# --- the pure helpers ----------------------------------------------------------------------


def test_strong_etag_is_quoted_stable_and_per_body() -> None:
    etag = strong_etag(b'{"a":1}')
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert etag == strong_etag(b'{"a":1}') != strong_etag(b'{"a":2}')
    assert render_json({"b": 1, "a": "ü"}) == '{"a":"ü","b":1}'.encode()


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('"x", "abc"', True),
        ('W/"abc"', True),  # If-None-Match compares weakly
        ("*", True),
        ('"abd"', False),
        ("abc", False),  # unquoted: not our tag
        ("", False),
        (None, False),
        (",,,", False),
        ('"abc"' + ", x" * 5000, False),  # absurdly long: not parsed
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert if_none_match(header, '"abc"') is matches


def test_public_cache_control() -> None:
    assert public_cache_control(60) == "public, max-age=60"
    assert public_cache_control(-5) == "public, max-age=0"


@pytest.mark.parametrize("raw", [None, [], [b"x", '"e"'], ["x", '"e"', "j"], [b"x", "e", "j"]])
def test_a_stored_representation_of_the_wrong_shape_is_refused(raw: Any) -> None:
    with pytest.raises(ValueError):
        Representation.load(raw)


# --- routes of our own ---------------------------------------------------------------------


class Source:
    def __init__(self) -> None:
        self.plans: list[dict[str, Any]] = [{"id": "basic", "price": 990}]
        self.expiry: dict[int, str] = {1: "2025-01-01", 2: "2025-06-01"}
        self.calls = 0

    async def load_plans(self) -> list[dict[str, Any]]:
        self.calls += 1
        await asyncio.sleep(0)
        return self.plans

    async def load_me(self, user_id: int) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(0)
        return {"id": user_id, "expires": self.expiry[user_id]}


def add_routes(app: FastAPI, source: Source) -> None:
    @app.get("/t/plans")
    async def plans(request: Request) -> Response:
        cache = request.app.state.services.cache
        return await public_json(
            request, cache, "plans:list", source.load_plans, max_age=60, tags=["plans"]
        )

    @app.get("/t/me/{user_id}")
    async def me(request: Request, user_id: int) -> Response:
        cache = request.app.state.services.cache
        return await private_json(request, cache, user_id, "me", lambda: source.load_me(user_id))


Client = Callable[..., Awaitable[tuple[httpx.AsyncClient, FastAPI, Source]]]


@pytest.fixture
async def client_for() -> AsyncIterator[Client]:
    contexts = []

    async def build(**overrides: Any) -> tuple[httpx.AsyncClient, FastAPI, Source]:
        app = create_app(make_settings(**overrides))
        source = Source()
        add_routes(app, source)
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        contexts.append(ctx)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        return client, app, source

    yield build
    for ctx in contexts:
        await ctx.__aexit__(None, None, None)


async def test_public_read_200_then_304(
    client_for: Client, shared_redis: RedisServer, key_prefix: str
) -> None:
    client, app, source = await client_for(redis_url=shared_redis.url, redis_key_prefix=key_prefix)
    first = await client.get("/t/plans")
    assert first.status_code == 200
    assert first.json() == [{"id": "basic", "price": 990}]
    assert first.headers["cache-control"] == "public, max-age=60"
    etag = first.headers["etag"]
    assert etag == strong_etag(first.content)

    again = await client.get("/t/plans", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["cache-control"] == "public, max-age=60"
    assert source.calls == 1  # the second request was a cache hit

    # The plans change: invalidate the tag, and the old ETag no longer matches.
    source.plans = [{"id": "basic", "price": 1290}]
    await app.state.services.cache.invalidate("plans")
    changed = await client.get("/t/plans", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()[0]["price"] == 1290
    assert changed.headers["etag"] != etag


async def test_private_read_per_user_and_invalidated_at_once(
    client_for: Client, shared_redis: RedisServer, key_prefix: str
) -> None:
    client, app, source = await client_for(redis_url=shared_redis.url, redis_key_prefix=key_prefix)
    one, two = await client.get("/t/me/1"), await client.get("/t/me/2")
    assert one.json()["expires"] == "2025-01-01" and two.json()["expires"] == "2025-06-01"
    for response in (one, two):
        assert response.headers["cache-control"] == PRIVATE_CACHE_CONTROL
        assert "private" in response.headers["cache-control"]
        assert "Cookie" in response.headers["vary"]
    assert one.headers["etag"] != two.headers["etag"]

    not_modified = await client.get("/t/me/1", headers={"If-None-Match": one.headers["etag"]})
    assert not_modified.status_code == 304
    assert not_modified.headers["cache-control"] == PRIVATE_CACHE_CONTROL
    assert source.calls == 2

    # A payment extends user 1: the subscription hook invalidates that user's entries.
    source.expiry[1] = "2026-01-01"
    await app.state.services.cache.invalidate_user(1)
    paid = await client.get("/t/me/1", headers={"If-None-Match": one.headers["etag"]})
    assert paid.status_code == 200 and paid.json()["expires"] == "2026-01-01"
    assert (await client.get("/t/me/2")).json()["expires"] == "2025-06-01"  # untouched, a hit
    assert source.calls == 3


async def test_a_corrupt_cached_representation_is_served_from_the_source(
    client_for: Client, shared_redis: RedisServer, key_prefix: str
) -> None:
    client, app, _source = await client_for(redis_url=shared_redis.url, redis_key_prefix=key_prefix)
    cache = app.state.services.cache
    bogus = pack_entry(b"\x93\x01\x02\x03", "msgpack", 2**50, {})  # decodes, wrong shape
    await cache.store.set(cache.entry_key("plans:list"), bogus, 60_000)
    response = await client.get("/t/plans")
    assert response.status_code == 200 and response.json()[0]["id"] == "basic"
    assert cache.stats.decode_errors == 1


async def test_metrics_expose_cache_counters(
    client_for: Client, shared_redis: RedisServer, key_prefix: str
) -> None:
    client, _, _ = await client_for(redis_url=shared_redis.url, redis_key_prefix=key_prefix)
    await asyncio.gather(*(client.get("/t/plans") for _ in range(5)))
    await client.get("/t/plans")
    text = (await client.get("/metrics")).text
    assert "upak_cache_hits_total 1.0" in text
    assert "upak_cache_misses_total 5.0" in text
    assert 'upak_cache_singleflight_waits_total{via="process"} 4.0' in text
    assert "upak_cache_bypasses_total 0.0" in text


@pytest.mark.slow
async def test_redis_killed_reads_still_served_then_hits_after_recovery(
    client_for: Client, fresh_redis: RedisServer
) -> None:
    client, app, source = await client_for(
        redis_url=fresh_redis.url,
        redis_socket_timeout=0.2,
        redis_connect_timeout=0.2,
        redis_health_interval=0.05,
    )
    first = await client.get("/t/plans")
    etag = first.headers["etag"]
    await client.get("/t/plans")
    assert source.calls == 1

    fresh_redis.kill()
    statuses = []
    for _ in range(10):
        statuses.append((await client.get("/t/plans")).status_code)
        statuses.append((await client.get("/t/plans", headers={"If-None-Match": etag})).status_code)
        statuses.append((await client.get("/t/me/1")).status_code)
    assert statuses == [200, 304, 200] * 10  # no 5xx; validators still work
    assert source.calls == 1 + 30  # every read went to the source
    text = (await client.get("/metrics")).text
    assert "upak_cache_bypasses_total 30.0" in text

    fresh_redis.start()
    async with asyncio.timeout(10):
        while app.state.services.store.mode.value != "redis":
            await asyncio.sleep(0.02)
    await client.get("/t/plans")
    calls = source.calls
    for _ in range(5):
        assert (await client.get("/t/plans")).status_code == 200
    assert source.calls == calls  # hits again
    assert app.state.services.cache.stats.hits >= 6


def test_representation_answers_follow_the_representation_they_are_given() -> None:
    answers = RepresentationAnswers(b"public, max-age=60", None)
    first, second = represent_json({"n": 1}), represent_json({"n": 22})

    def scope(if_none_match: str | None = None) -> dict[str, Any]:
        headers = [] if if_none_match is None else [(b"if-none-match", if_none_match.encode())]
        return {"headers": headers}

    status, headers, body = answers.answer(scope(), first)
    assert (status, body) == (200, first.body)
    assert headers == [
        (b"etag", first.etag.encode()),
        (b"cache-control", b"public, max-age=60"),
        (b"content-length", b"%d" % len(first.body)),
        (b"content-type", b"application/json"),
    ]
    headers.append((b"x-added", b"by a layer outside"))  # its own list: the next is clean
    assert answers.answer(scope(), first)[1][-1] == (b"content-type", b"application/json")
    assert answers.answer(scope(first.etag), first) == (304, headers[:2], b"")
    status, headers, body = answers.answer(scope(first.etag), second)  # changed since
    assert (status, body) == (200, second.body)
    assert headers[0] == (b"etag", second.etag.encode())
    assert headers[2] == (b"content-length", b"%d" % len(second.body))

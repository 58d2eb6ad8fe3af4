"""RequestGuard: the outermost layer's three jobs (metrics, the store-error answer, the body
limit) over a plain ASGI app, no network: what each answers, and that the metrics count it."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from upak.store import FailoverStore, StoreError
from upak.store.memory import MemoryStore
from upak.web.metrics import Metrics
from upak.web.middleware.guard import RESPONSE_HEADERS, RequestGuard

LIMIT = 1024


def counted(metrics: Metrics, code: int) -> float:
    labels = {"route": "unmatched", "method": "POST", "status": f"{code // 100}xx"}
    value = metrics.registry.get_sample_value(
        "upak_http_requests_total", {**labels, "code": str(code)}
    )
    return value or 0.0


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def store_fails(scope: Scope, receive: Receive, send: Send) -> None:
    raise StoreError("WRONGTYPE Operation against a key holding the wrong kind of value")


async def store_fails_mid_answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise StoreError("WRONGTYPE after the start")


def guarded(app: Any) -> tuple[httpx.AsyncClient, Metrics]:
    metrics = Metrics(FailoverStore(None, MemoryStore()))
    guard = RequestGuard(app, metrics=metrics, limit=LIMIT)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t")
    return client, metrics


async def test_a_store_error_is_a_503_problem_and_counted_as_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, metrics = guarded(store_fails)
    with caplog.at_level(logging.ERROR, "upak.web"):
        response = await client.post("/x")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/problem+json"
    assert counted(metrics, 503) == 1 and counted(metrics, 500) == 0
    assert "store error on POST /x" in caplog.text


async def test_a_store_error_after_the_start_is_not_answered_twice() -> None:
    client, _ = guarded(store_fails_mid_answer)
    with pytest.raises(StoreError):
        await client.post("/x")


async def test_bodies_within_the_limit_pass_and_over_it_are_413() -> None:
    client, metrics = guarded(echo_length)
    assert (await client.post("/x", content=b"a" * LIMIT)).text == str(LIMIT)
    declared = await client.post("/x", content=b"a" * (LIMIT + 1))
    assert declared.status_code == 413 and declared.headers["connection"] == "close"

    async def chunks() -> Any:  # no Content-Length: counted as it streams
        for _ in range(3):
            yield b"a" * (LIMIT // 2)

    streamed = await client.post("/x", content=chunks())
    assert streamed.status_code == 413
    assert counted(metrics, 200) == 1 and counted(metrics, 413) == 2


async def test_a_content_length_that_is_no_number_is_400() -> None:
    client, metrics = guarded(echo_length)
    response = await client.post("/x", content=b"{}", headers={"content-length": "abc"})
    assert response.status_code == 400 and counted(metrics, 400) == 1


FIELDS = [(b"ratelimit-policy", b'"default";q=2;w=60'), (b"ratelimit", b'"default";r=1;t=60')]


def leaving_fields(app: Any) -> Any:
    """`app` behind a layer that leaves header fields for the answer (as the rate limiter)."""

    async def layer(scope: Scope, receive: Receive, send: Send) -> None:
        scope[RESPONSE_HEADERS] = FIELDS
        await app(scope, receive, send)

    return layer


async def test_fields_left_in_the_scope_end_the_answers_headers() -> None:
    client, _ = guarded(leaving_fields(echo_length))
    response = await client.post("/x", content=b"abc")
    assert response.text == "3"
    assert response.headers.raw[-2:] == FIELDS


async def test_the_guards_own_answers_do_not_carry_them() -> None:
    client, _ = guarded(leaving_fields(store_fails))
    unavailable = await client.post("/x")
    assert unavailable.status_code == 503 and "ratelimit" not in unavailable.headers

    async def chunks() -> Any:
        for _ in range(3):
            yield b"a" * (LIMIT // 2)

    client, _ = guarded(leaving_fields(echo_length))
    too_large = await client.post("/x", content=chunks())
    assert too_large.status_code == 413 and "ratelimit" not in too_large.headers

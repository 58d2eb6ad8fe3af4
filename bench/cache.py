"""Cache-hit reads per second: ours next to cashews, on one private Redis, same values.

Both caches read the same plans-like value (five plan dicts, ~0.6 KB) from the same
redis-server, 64 concurrent callers, for a fixed time each:
* `get`: a plain read of a cached key (ours: `Cache.get`; cashews: `cache.get`);
* decorated: a cached function called with the same argument (ours: `@cache.cached`;
  cashews: `@cache(ttl=..., key=...)`);
* ours with a tag (the entry and its tag version read in one pipelined round trip).
Then `GET /plans` requests/s through the app (in-process ASGI): the real route, served from
the cache (`public_json`: cached body + ETag), vs the route as it was before caching; and the
same pair for a catalogue read from a database (SQLAlchemy on SQLite) on each request.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cashews import Cache as Cashews
from fastapi import Request
from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.responses import Response

from common import Result, Row, alternating, asgi_get, measure_rate, meter, redis_server
from rates import mean
from upak.config import load_settings
from upak.features.cache import Cache
from upak.store import KeySpace, build_store
from upak.web.app import create_app
from upak.web.http_cache import public_cache_control, public_json, represent_json, respond
from upak.web.routes.plans import catalogue

SECONDS = float(os.environ.get("BENCH_SECONDS", "2.0"))
CONCURRENCY = 64
PLANS: list[dict[str, Any]] = [
    {
        "id": f"plan-{n}",
        "title": f"Plan {n}: product cards for marketplaces",
        "price": 990 * n,
        "currency": "RUB",
        "period_days": 30 * n,
        "features": ["cards", "analytics", "export", "priority support"][:n],
    }
    for n in range(1, 6)
]


DISTINCT_KEYS = 10_000
PEER_SETUP = "cashews 7 defaults (Redis backend, pickle serializer, no client-side cache)"


async def cache_hits(result: Result, url: str) -> None:
    settings = load_settings(env_file=None, redis_url=url)
    store = build_store(settings)
    await store.start()
    ours = Cache(store, KeySpace("bench:"), default_ttl=300)
    peer = Cashews()
    peer.setup(url)
    await peer.init()
    try:
        await ours.set("plans", PLANS)
        await peer.set("plans", PLANS, expire=300)
        assert await ours.get("plans") == PLANS and await peer.get("plans") == PLANS

        hot = "one hot key (every call reads the same entry: our single-flight merges "
        hot += "concurrent lookups of one key into one read)"
        distinct = f"{DISTINCT_KEYS:,} distinct keys round robin (no two concurrent calls "
        distinct += "share a key: nothing to merge)"
        for n in range(DISTINCT_KEYS):
            await ours.set(f"plans:{n}", PLANS)
            await peer.set(f"plans:{n}", PLANS, expire=300)
        for concurrency in (1, CONCURRENCY):
            callers = f"{concurrency} concurrent caller{'s' if concurrency > 1 else ''}"
            for keys, ours_get, peer_get in (
                (hot, lambda i: ours.get("plans"), lambda i: peer.get("plans")),
                (
                    distinct,
                    lambda i: ours.get(f"plans:{i % DISTINCT_KEYS}"),
                    lambda i: peer.get(f"plans:{i % DISTINCT_KEYS}"),
                ),
            ):
                ours_rate, peer_rate = await interleaved(
                    ours_get, peer_get, concurrency=concurrency
                )
                result.add(
                    Row(
                        f"cache-hit get, {callers}, {keys.split(' (')[0]}",
                        ours_rate,
                        peer_rate,
                        "cashews",
                        setup=f"{callers}; {keys}; peer: {PEER_SETUP}",
                    )
                )

        async def source(currency: str) -> list[dict[str, Any]]:
            return PLANS

        ours_fn = ours.cached("plans", user=None, ttl=300)(source)
        # cashews' default (protected=True) runs concurrent identical calls, hits included, as
        # one task: 64 callers share one GET. protected=False reads per call, as ours does.
        peer_fn = peer(ttl="5m", key="plans:{currency}")(source)
        peer_each = peer(ttl="5m", key="plans:{currency}", protected=False)(source)
        await ours_fn("RUB")
        await peer_fn("RUB")
        callers = f"{CONCURRENCY} concurrent callers"
        ours_dec, peer_dec = await interleaved(
            lambda i: ours_fn("RUB"), lambda i: peer_each("RUB"), concurrency=CONCURRENCY
        )
        result.add(
            Row(
                f"cache-hit decorated call, {callers}, one hot key",
                ours_dec,
                peer_dec,
                "cashews, protected=False",
                setup=f"{callers}; {hot}; peer: {PEER_SETUP}, decorator with protected=False "
                "(one read per call, as ours)",
            )
        )
        ours_dec2, peer_coalesced = await interleaved(
            lambda i: ours_fn("RUB"), lambda i: peer_fn("RUB"), concurrency=CONCURRENCY
        )
        result.add(
            Row(
                f"cache-hit decorated call, {callers}, one hot key, cashews coalescing hits",
                ours_dec2,
                peer_coalesced,
                "cashews protected (its default)",
                setup=f"{callers}; {hot}; peer: {PEER_SETUP}, decorator defaults "
                "(protected=True: concurrent identical calls share one task)",
            )
        )

        async def source_plans() -> list[dict[str, Any]]:
            return PLANS

        async def tagged() -> list[dict[str, Any]]:
            return await ours.get_or_compute("plans:tagged", source_plans, tags=["plans"])

        await tagged()
        ours_tag = await measure_rate(lambda i: tagged(), concurrency=CONCURRENCY, seconds=SECONDS)
        result.add(
            Row(
                f"cache-hit get_or_compute with 1 tag (ours only), {CONCURRENCY} concurrent",
                ours_tag,
                setup=f"{CONCURRENCY} concurrent callers; one hot key and its tag",
            )
        )
        result.extra["cache_stats"] = ours.stats.as_dict()
    finally:
        await peer.close()
        await store.close()


async def interleaved(
    ours: Callable[[int], Awaitable[object]],
    peer: Callable[[int], Awaitable[object]],
    *,
    concurrency: int,
) -> tuple[float, float]:
    """Mean rates of `ours` and `peer`: both warmed, then paired rounds, the order reversed
    each round (bench/rates.py), so neither is always timed first or cold."""
    rates = await alternating(
        {"ours": meter(ours, concurrency), "peer": meter(peer, concurrency)}, seconds=SECONDS
    )
    return mean(rates["ours"]), mean(rates["peer"])


async def plans_route(result: Result, url: str) -> None:
    directory = Path(tempfile.mkdtemp(prefix="upak-bench-"))
    engine = create_async_engine(f"sqlite+aiosqlite:///{directory / 'plans.db'}")
    meta = MetaData()
    plans = Table(
        "plans",
        meta,
        Column("id", String, primary_key=True),
        Column("title", String),
        Column("price", Integer),
        Column("currency", String),
        Column("period_days", Integer),
    )
    async with engine.begin() as conn:
        await conn.run_sync(meta.create_all)
        await conn.execute(
            plans.insert(), [{k: v for k, v in p.items() if k != "features"} for p in PLANS]
        )

    async def load_plans() -> list[dict[str, Any]]:
        # What a /plans route does per request without a cache: a query, then shaping.
        async with engine.connect() as conn:
            rows = (await conn.execute(select(plans).order_by(plans.c.price))).mappings().all()
        return [dict(row) for row in rows]

    # Limits far above the offered load: every measured request must be a 200, not a 429.
    app = create_app(
        load_settings(
            env_file=None,
            redis_url=url,
            redis_key_prefix="benchapp:",
            rate_limit_default="10000000/minute:gcra",
        )
    )

    @app.get("/plans-cached")
    async def cached(request: Request) -> Response:
        cache = request.app.state.services.cache
        return await public_json(
            request, cache, "bench:plans-db", load_plans, max_age=60, tags=["plans"]
        )

    @app.get("/plans-uncached")
    async def uncached(request: Request) -> Response:
        return respond(request, represent_json(await load_plans()), public_cache_control(60))

    @app.get("/plans-before")
    async def before() -> list[dict[str, Any]]:
        # The route as issue 4 wrote it, before the cache: FastAPI serialises per request.
        return await catalogue()

    async with app.router.lifespan_context(app):
        assert await asgi_get(app, "/plans-cached") == 200
        assert await asgi_get(app, "/plans-uncached") == 200
        hot, cold = await interleaved(
            lambda i: asgi_get(app, "/plans-cached"),
            lambda i: asgi_get(app, "/plans-uncached"),
            concurrency=16,
        )
        real, plain = await interleaved(
            lambda i: asgi_get(app, "/plans"),
            lambda i: asgi_get(app, "/plans-before"),
            concurrency=16,
        )
        stats = app.state.services.cache.stats
        assert stats.computes == 2 and stats.hits > 0, stats
    await engine.dispose()
    setup = (
        "16 concurrent in-process ASGI calls, one URL (one cache entry); both routes warmed, "
        "paired rounds in alternating order"
    )
    result.add(
        Row(
            "GET /plans req/s: cached vs the uncached route",
            real,
            plain,
            "uncached",
            setup=f"{setup}; peer: the route as it was before caching (FastAPI serialises)",
        )
    )
    result.add(
        Row(
            "GET /plans from a database req/s: cached vs uncached",
            hot,
            cold,
            "uncached",
            setup=f"{setup}; peer: SQLAlchemy select on SQLite + JSON + ETag per request",
        )
    )
    result.notes.append(
        "GET /plans rows: requests driven straight into the ASGI app (no HTTP client), 16 "
        "concurrent. The real /plans (a catalogue in code) against the route as it was before "
        "caching; and a database-backed variant: SQLAlchemy async select on SQLite + JSON + "
        "ETag per request, against public_json (cached body + ETag, one round trip)."
    )


async def main() -> None:
    result = Result("cache", "Caching: cache-hit reads/s next to cashews, GET /plans cached")
    result.notes.append(
        f"One private redis-server; 1 or {CONCURRENCY} concurrent callers as each row says, "
        f"{SECONDS:g} s per side in paired rounds (each side warmed first, the order reversed "
        "each round); cashews 7 with its defaults (pickle serializer, no client-side cache). "
        "One hot key flatters ours (single-flight merges concurrent lookups of a key into one "
        f"read); the {DISTINCT_KEYS:,}-distinct-key rows are the comparison without it."
    )
    with redis_server() as server:
        await cache_hits(result, server.url)
        await plans_route(result, server.url)
    result.write()


if __name__ == "__main__":
    asyncio.run(main())

"""`create_app(settings)`: the FastAPI app and its lifespan."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from upak.config import Settings, load_settings
from upak.domain.db import DatabaseError, redacted, upgrade
from upak.domain.passwords import Passwords, PasswordsBusy, passwords_from_settings
from upak.logs import configure_logging
from upak.store import ClusterFailoverStore, FailoverStore, Mode, build_store
from upak.web.client_ip import trusted_proxy_headers
from upak.web.hot_routes import HotReads, install_hot_routes
from upak.web.metrics import Metrics
from upak.web.middleware.guard import RequestGuard
from upak.web.middleware.head import HeadAsGet
from upak.web.middleware.origin import OriginCheck
from upak.web.middleware.ratelimit import (
    RateLimitRules,
    build_rate_limiter,
    install_rate_limiting,
)
from upak.web.middleware.sessions import SessionMiddleware, cookie_name
from upak.web.openapi import install_openapi
from upak.web.problems import install_problem_handlers
from upak.web.routes import auth, health, me, payments, plans, webhooks
from upak.web.routes.docs import install_docs
from upak.web.services import Services
from upak.web.telemetry import settle_native_telemetry

log = logging.getLogger("upak.web")


def create_app(
    settings: Settings,
    *,
    store: FailoverStore | ClusterFailoverStore | None = None,
    clock: Callable[[], float] = time.time,
    passwords: Passwords | None = None,
    freeze_startup_heap: bool = False,
) -> FastAPI:
    """Build the app for `settings`. `store`, `clock`, `passwords` are injectable for tests.

    `freeze_startup_heap` is for a process that serves this one app (`upak serve`): see the
    lifespan. Tests build hundreds of apps in one process and leave it off.
    """
    store = store or build_store(settings, clock=clock)
    services = Services(settings=settings, store=store, metrics=Metrics(store), clock=clock)
    services.passwords = passwords or passwords_from_settings(
        settings.password_hash_concurrency, settings.password_hash_queue
    )
    services.ratelimit = build_rate_limiter(settings, store, services.keys, clock=clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            revision = await upgrade(services.db_engine)
        except DatabaseError as exc:
            log.error("cannot start: %s", exc)
            raise
        log.info("database %s at revision %s", redacted(str(services.db_engine.url)), revision)
        services.db_availability.start(services.db_engine)
        await store.start()
        if store.mode is Mode.MEMORY and settings.production:
            log.error(
                "PRODUCTION WITHOUT REDIS: %s is unreachable; replay protection and "
                "sessions are per process until it returns. Production must use Redis.",
                settings.redis.redacted_url(),
            )
        if services.yookassa is None and settings.production:
            log.error(
                "PRODUCTION WITHOUT YOOKASSA CREDENTIALS: notifications are trusted as sent, "
                "not confirmed with YooKassa's API, and checkout is off. Set "
                "YOOKASSA_SHOP_ID and YOOKASSA_SECRET_KEY."
            )
        if freeze_startup_heap:
            # Everything start-up made (FastAPI, pydantic, SQLAlchemy, the routes) lives as
            # long as the process. Frozen, full collections stop walking it: a request that
            # waits on Redis keeps its objects alive through young collections, they are
            # promoted, and the full collections they trigger cost 70 ms at p99 otherwise.
            gc.collect()
            gc.freeze()
        settle_native_telemetry(app)
        services.metrics.start()
        try:
            yield
        finally:
            await services.metrics.stop()
            await services.cache.drain()  # background cache refreshes finish before the store goes
            await store.close()
            await services.db_availability.close()
            if services.yookassa is not None:
                await services.yookassa.close()
            await services.db_engine.dispose()

    # docs_url/redoc_url off: FastAPI's pages load from a CDN; `install_docs` serves our own.
    app = FastAPI(
        title="UPAK Backend", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.services = services
    install_problem_handlers(app)
    app.add_exception_handler(PasswordsBusy, auth.passwords_busy)
    app.include_router(health.router)
    app.include_router(plans.router)
    app.include_router(payments.router)
    app.include_router(webhooks.router)
    app.include_router(auth.router)
    app.include_router(me.router)
    install_docs(app)
    install_openapi(
        app,
        cookie_name=cookie_name(settings),
        unlimited_paths=RateLimitRules.from_settings(settings).exempt_paths,
        rate_limited=services.ratelimit is not None,
    )
    # Middleware added later wraps what was added before. The session is resolved inside the
    # origin check (a refused request costs no store call) and outside anything that reads it.
    # Innermost, the hot routes: the GETs every client repeats skip FastAPI's route scan and
    # dependency solving (their declarations above stay for OpenAPI and other methods).
    install_hot_routes(
        app, {"/plans": plans.hot_list_plans(services.cache), "/me": me.hot_me(services)}
    )
    app.add_middleware(HeadAsGet)  # only the routes see a HEAD as its GET
    if services.ratelimit is not None:  # inside sessions, so user ids key the default limit
        install_rate_limiting(app, services.ratelimit, settings)
    # The hot routes' cache reads are started with the session lookup: one write, one round
    # trip less (/me's for the user the cookie names, used only once the session confirms it).
    hot_reads = HotReads(
        {"/plans": plans.prefetch_plans(services.cache), "/me": me.prefetch_me(services.cache)}
    )
    app.add_middleware(
        SessionMiddleware, sessions=services.sessions, settings=settings, ahead=hot_reads.start
    )
    app.add_middleware(OriginCheck, allowed_origins=settings.cors_origin_list)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Content-Type", "If-None-Match", "If-Match"],
        )
    # Around every middleware that talks to the store or reads a body: every answer counted,
    # a StoreError a 503 (never a 500), bodies within the limit.
    app.add_middleware(RequestGuard, metrics=services.metrics)
    if services.trusted_proxies:  # the client behind them, for everything inside and the log
        app.add_middleware(trusted_proxy_headers, trusted_proxies=services.trusted_proxies)
    return app


def create_app_from_env() -> FastAPI:
    """The uvicorn factory: settings from the environment and .env."""
    settings = load_settings()
    configure_logging(settings)
    return create_app(settings, freeze_startup_heap=True)

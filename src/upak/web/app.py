"""`create_app(settings)`: the FastAPI app and its lifespan."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from upak.config import Settings, load_settings
from upak.domain.db import make_engine, make_sessionmaker
from upak.logs import configure_logging
from upak.store import FailoverStore, Mode, build_store
from upak.web.metrics import Metrics
from upak.web.middleware.body_limit import BodySizeLimit
from upak.web.problems import install_problem_handlers
from upak.web.routes import health, payments, plans, webhooks
from upak.web.services import Services

log = logging.getLogger("upak.web")


def create_app(
    settings: Settings,
    *,
    store: FailoverStore | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the app for `settings`. `store` and `clock` are injectable for tests."""
    store = store or build_store(settings, clock=clock)
    services = Services(settings=settings, store=store, metrics=Metrics(store), clock=clock)
    engine = make_engine(settings.database_url.get_secret_value())
    services.db = make_sessionmaker(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.start()
        if store.mode is Mode.MEMORY and settings.production:
            log.error(
                "PRODUCTION WITHOUT REDIS: %s is unreachable; replay protection and "
                "sessions are per process until it returns. Production must use Redis.",
                settings.redis.redacted_url(),
            )
        try:
            yield
        finally:
            await services.cache.drain()  # background cache refreshes finish before the store goes
            await store.close()
            await engine.dispose()

    app = FastAPI(title="UPAK Backend", version="0.1.0", lifespan=lifespan)
    app.state.services = services
    install_problem_handlers(app)
    app.include_router(health.router)
    app.include_router(plans.router)
    app.include_router(payments.router)
    app.include_router(webhooks.router)
    app.add_middleware(BodySizeLimit)
    return app


def create_app_from_env() -> FastAPI:
    """The uvicorn factory: settings from the environment and .env."""
    settings = load_settings()
    configure_logging(settings)
    return create_app(settings)

"""What a running app holds: settings, the store, and the features built on them.

Built once per app in `create_app` and reached by routes through `request.app.state.services`
(see `get_services`), so tests can build apps with any configuration side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from upak.config import Settings
from upak.domain.availability import DatabaseAvailability
from upak.domain.billing import SubscriptionHook
from upak.domain.db import Deadlines, make_engine, make_sessionmaker
from upak.domain.passwords import Passwords
from upak.domain.yookassa_api import YooKassaAPI, api_from_settings
from upak.features.cache import Cache
from upak.features.idempotency import IdempotencyKeys
from upak.features.ratelimit import RateLimiter
from upak.features.replay import ReplayGuard, ReplayWindows
from upak.features.sessions import SessionManager
from upak.features.signatures import SigningKeys
from upak.features.yookassa import allowed_networks
from upak.store import ClusterFailoverStore, FailoverStore, KeySpace
from upak.web.client_ip import Network
from upak.web.metrics import Metrics


@dataclass
class Services:
    settings: Settings
    store: FailoverStore | ClusterFailoverStore
    metrics: Metrics
    clock: Callable[[], float] = time.time
    ratelimit: RateLimiter | None = None  # None when RATE_LIMIT_ENABLED is false
    keys: KeySpace = field(init=False)
    # Payments and webhooks: the database, who hears of subscription changes (a cached /me),
    # the replay gate, the Standard Webhooks keys and the networks YooKassa may call from.
    db: async_sessionmaker[AsyncSession] = field(init=False)  # `async with services.db() as s`
    on_subscription_changed: list[SubscriptionHook] = field(default_factory=list)
    replay: ReplayGuard = field(init=False)
    webhook_keys: SigningKeys | None = field(init=False)
    yookassa_networks: tuple[Network, ...] = field(init=False)
    trusted_proxies: tuple[Network, ...] = field(init=False)
    cache: Cache = field(init=False)
    # Checkout: YooKassa's API (None without shop credentials) and Idempotency-Key records.
    yookassa: YooKassaAPI | None = field(init=False)
    idempotency: IdempotencyKeys = field(init=False)
    # Accounts and sessions: the database engine, password hashing, the session manager.
    db_engine: AsyncEngine = field(init=False)
    passwords: Passwords = field(default_factory=Passwords)
    sessions: SessionManager = field(init=False)
    # Whether the database answers: /health reads it; while down, sessions are refused at once.
    db_availability: DatabaseAvailability = field(init=False)

    def __post_init__(self) -> None:
        self.keys = KeySpace(self.settings.redis_key_prefix)
        deadlines = Deadlines(
            connect=self.settings.database_connect_timeout,
            checkout=self.settings.database_pool_timeout,
            statement=self.settings.database_statement_timeout,
        )
        self.db_availability = DatabaseAvailability(
            interval=self.settings.database_health_interval, deadline=deadlines.call
        )
        self.db_engine = make_engine(
            self.settings.database_url.get_secret_value(),
            deadlines,
            on_unavailable=self.db_availability.trip,
        )
        self.db = make_sessionmaker(self.db_engine, self.db_availability.refuse_while_down)
        self.sessions = SessionManager(
            self.store,
            self.keys,
            idle_timeout=self.settings.session_idle_timeout,
            max_age=self.settings.session_max_age,
            clock=self.clock,
        )
        self.replay = ReplayGuard(self.store, self.keys, ReplayWindows.from_settings(self.settings))
        keys = self.settings.webhook_keys
        self.webhook_keys = SigningKeys(keys) if keys else None
        self.yookassa_networks = allowed_networks(self.settings.yookassa_allowed_ips)
        self.trusted_proxies = self.settings.trusted_proxies
        self.yookassa = api_from_settings(self.settings)
        self.idempotency = IdempotencyKeys(self.store, self.keys)
        self.cache = Cache(
            self.store, self.keys, default_ttl=self.settings.redis_ttl, clock=self.clock
        )
        self.metrics.watch_cache(self.cache)
        self.metrics.watch_database(self.db_availability)
        # A payment that changes a subscription drops the user's cached reads (/me) at once.
        self.on_subscription_changed.append(self.cache.invalidate_user)


def services_of(request: Request) -> Services:
    """The app's Services, for code that holds a request."""
    return request.app.state.services  # type: ignore[no-any-return]


async def get_services(request: Request) -> Services:
    """The same, as a FastAPI dependency. `async` on purpose: FastAPI runs a plain `def`
    dependency in a worker thread, a thread hop per request for a dictionary lookup."""
    return request.app.state.services  # type: ignore[no-any-return]

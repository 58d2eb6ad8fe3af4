"""Concurrent payments of one user through the webhook, on SQLite and PostgreSQL.

Issue 12: 8 concurrent payments for one user, in bursts, deadlocked on PostgreSQL (the
payment's insert share-locked the user row through the foreign key, then asked for FOR
UPDATE on it). Now every transaction locks the user row first; each delivery must answer 200
the first time, and the subscription must be extended by exactly one period per payment.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer
from tests.support.webhooks import YOOKASSA_IP, notification
from upak.domain.billing import Payment, as_utc, in_transaction
from upak.domain.db import Deadlines, make_engine, make_sessionmaker, upgrade
from upak.domain.models import User
from upak.web.app import create_app

BURSTS, PER_BURST = 5, 8


async def test_concurrent_payments_of_one_user_all_answer_200_once(
    db_url_engine: tuple[str, AsyncEngine], shared_redis: RedisServer, key_prefix: str
) -> None:
    _, engine = db_url_engine
    await upgrade(engine)
    sessions = make_sessionmaker(engine)
    async with sessions() as session:
        session.add(User(id=1, email="payer@example.com", password_hash="x"))
        await session.commit()
    now = time.time()
    app = create_app(
        make_settings(redis_url=shared_redis.url, redis_key_prefix=key_prefix), clock=lambda: now
    )
    services = app.state.services
    await services.db_engine.dispose()
    services.db_engine, services.db = engine, sessions  # the fixture's database (its schema)
    transport = httpx.ASGITransport(app=app, client=(YOOKASSA_IP, 40000))
    statuses: list[tuple[int, str]] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client,
    ):
        for _ in range(BURSTS):
            bodies = [notification(payment_id=str(uuid.uuid4())) for _ in range(PER_BURST)]
            answers = await asyncio.gather(
                *(client.post("/webhooks/yookassa", content=body) for body in bodies)
            )
            statuses += [(a.status_code, a.json().get("status", a.text)) for a in answers]
    assert statuses == [(200, "processed")] * (BURSTS * PER_BURST)
    async with sessions() as session:
        count = await session.scalar(select(func.count()).select_from(Payment))
        user = await session.get(User, 1)
    assert count == BURSTS * PER_BURST
    assert user is not None and user.subscription_expires_at is not None
    expected = datetime.fromtimestamp(now, UTC) + timedelta(days=30 * BURSTS * PER_BURST)
    assert as_utc(user.subscription_expires_at) == expected


async def test_a_deadlock_is_retried_once(
    db_url_engine: tuple[str, AsyncEngine], caplog: pytest.LogCaptureFixture
) -> None:
    """A real deadlock (two transactions locking two users in opposite orders): the one
    PostgreSQL aborts is run again by `in_transaction`, and its second run succeeds."""
    _, engine = db_url_engine
    if engine.dialect.name != "postgresql":
        pytest.skip("deadlock detection is PostgreSQL's (SQLite has one writer at a time)")
    await upgrade(engine)
    sessions = make_sessionmaker(engine)
    async with sessions() as session:
        session.add_all([User(id=n, email=f"u{n}@example.com", password_hash="x") for n in (1, 2)])
        await session.commit()
    lock = "UPDATE users SET plan = plan WHERE id = :id"
    runs = 0
    async with engine.connect() as other:
        # The other transaction detects late (10 s): this test's is the victim (after 1 s).
        await other.execute(text("SET deadlock_timeout = '10s'"))
        await other.execute(text(lock), {"id": 2})

        async def other_takes_user_1() -> None:
            await other.execute(text(lock), {"id": 1})
            await other.commit()

        async def work(session) -> int:
            nonlocal runs
            runs += 1
            await session.execute(text("UPDATE users SET plan = 'start' WHERE id = 1"))
            if runs == 1:
                await session.execute(text("SET LOCAL deadlock_timeout = '1s'"))
                waiting = asyncio.create_task(session.execute(text(lock), {"id": 2}))
                await asyncio.sleep(0.05)  # this one waits for user 2 first
                tasks.append(asyncio.create_task(other_takes_user_1()))
                await waiting
            await session.commit()
            return runs

        tasks: list[asyncio.Task[None]] = []
        async with asyncio.timeout(30):
            assert await in_transaction(sessions, work) == 2
            await asyncio.gather(*tasks)
    assert "retried after" in caplog.text
    async with sessions() as session:
        assert (await session.get(User, 1)).plan == "start"  # type: ignore[union-attr]


async def test_a_lock_wait_past_the_busy_timeout_is_retried_once(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's counterpart of the deadlock: another writer holds the lock past the busy
    timeout; `in_transaction` runs the work once more, and its second run succeeds."""
    url = f"sqlite+aiosqlite:///{tmp_path}/locked.db"
    engine = make_engine(url, Deadlines(statement=0.2))
    holder = make_engine(url)
    try:
        await upgrade(engine)
        sessions = make_sessionmaker(engine)
        runs = 0
        async with holder.connect() as other:
            await other.exec_driver_sql("BEGIN IMMEDIATE")  # another process writing

            async def work(session) -> int:
                nonlocal runs
                runs += 1
                if runs == 2:
                    await other.rollback()  # the other writer is done by the second run
                session.add(User(id=1, email="payer@example.com", password_hash="x"))
                await session.commit()
                return runs

            assert await in_transaction(sessions, work) == 2
        assert "retried after a lock wait" in caplog.text
        async with sessions() as session:
            assert await session.get(User, 1) is not None
    finally:
        await engine.dispose()
        await holder.dispose()

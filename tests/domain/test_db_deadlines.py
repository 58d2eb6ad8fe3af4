"""Every database call has a deadline, and a down or hung database is `DatabaseUnavailable`.

Against a PostgreSQL cluster of the suite's own that the tests stop and freeze (SIGSTOP), and
against SQLite with a lock held by another connection. After each fault the same engine must
serve again by itself: no broken connection is left in the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import make_settings
from tests.support.postgres import PostgresServer
from upak.config import ConfigError
from upak.domain.availability import DatabaseAvailability
from upak.domain.db import (
    DatabaseUnavailable,
    Deadlines,
    make_engine,
    make_sessionmaker,
    unavailable_reason,
)

# Against a PostgreSQL cluster of its own, with real deadlines.
slow = pytest.mark.slow

# Short deadlines so the suite stays quick; generous slack for a loaded machine.
DEADLINES = Deadlines(connect=1.0, checkout=1.0, statement=1.0)
SLACK = 2.0


@pytest.fixture
def pg(throwaway_postgres: PostgresServer) -> AsyncIterator[PostgresServer]:
    yield throwaway_postgres
    # A test that failed half-way must not leave the shared cluster stopped or frozen.
    if throwaway_postgres.paused:
        throwaway_postgres.resume()
    if throwaway_postgres.proc is None or throwaway_postgres.proc.poll() is not None:
        throwaway_postgres.start()


@pytest.fixture
async def engine_and_trips(pg: PostgresServer) -> AsyncIterator[tuple[AsyncEngine, list[str]]]:
    trips: list[str] = []
    engine = make_engine(pg.new_database(), DEADLINES, on_unavailable=trips.append)
    yield engine, trips
    await engine.dispose()


async def select_one(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("SELECT 1")))


async def timed_failure(engine: AsyncEngine, sql: str = "SELECT 1") -> float:
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        async with engine.connect() as connection:
            await connection.execute(text(sql))
    return time.monotonic() - started


@slow
async def test_a_stopped_server_is_unavailable_at_once_and_serves_again_when_back(
    pg: PostgresServer, engine_and_trips: tuple[AsyncEngine, list[str]]
) -> None:
    engine, trips = engine_and_trips
    assert await select_one(engine) == 1  # a connection now waits in the pool
    pg.stop()
    assert await timed_failure(engine) < SLACK  # refused: no deadline to wait out
    assert trips and "cannot connect" in trips[-1]
    pg.start()
    assert await select_one(engine) == 1  # the same engine, no restart


@slow
async def test_a_hung_server_costs_one_deadline_on_a_pooled_connection(
    pg: PostgresServer, engine_and_trips: tuple[AsyncEngine, list[str]]
) -> None:
    engine, trips = engine_and_trips
    assert await select_one(engine) == 1
    pg.pause()
    try:
        took = await timed_failure(engine)
        assert took < DEADLINES.statement + SLACK
        assert trips == ["no answer within the deadline"]
        # A new connection while it is hung waits the connect deadline, not asyncpg's 60 s.
        took = await timed_failure(engine)
        assert took < DEADLINES.connect + DEADLINES.statement + SLACK
    finally:
        pg.resume()
    # Nothing broken stayed in the pool: every call after the wake-up is served.
    assert [await select_one(engine) for _ in range(5)] == [1] * 5


@slow
async def test_a_server_that_hangs_mid_statement_answers_within_the_deadline(
    pg: PostgresServer, engine_and_trips: tuple[AsyncEngine, list[str]]
) -> None:
    engine, _ = engine_and_trips
    sessions = make_sessionmaker(engine)

    async def long_transaction() -> float:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            async with sessions() as db, db.begin():
                await db.execute(text("SELECT 1"))
                await db.execute(text("SELECT pg_sleep(0.3), 1"))
                await db.execute(text("SELECT pg_sleep(30)"))  # frozen under our feet
        return time.monotonic() - started

    task = asyncio.create_task(long_transaction())
    await asyncio.sleep(0.6)  # inside the last statement
    pg.pause()
    try:
        # The rollback after the timeout must not wait again on the frozen server.
        assert await asyncio.wait_for(task, 30) < 0.6 + DEADLINES.statement + SLACK
    finally:
        pg.resume()
    assert await select_one(engine) == 1


@slow
async def test_constraint_errors_are_not_unavailability(
    engine_and_trips: tuple[AsyncEngine, list[str]],
) -> None:
    engine, trips = engine_and_trips
    with pytest.raises(Exception) as caught:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id int PRIMARY KEY)"))
            await connection.execute(text("INSERT INTO t VALUES (1), (1)"))
    assert not isinstance(caught.value, DatabaseUnavailable)
    assert unavailable_reason(caught.value) is None
    assert trips == []


@slow
async def test_the_breaker_opens_without_traffic_and_closes_by_itself(
    pg: PostgresServer, engine_and_trips: tuple[AsyncEngine, list[str]]
) -> None:
    engine, _ = engine_and_trips
    availability = DatabaseAvailability(interval=0.1, deadline=DEADLINES.call)
    sessions = make_sessionmaker(engine, availability.refuse_while_down)
    availability.start(engine)
    try:
        await until(lambda: availability.state == "ok")
        pg.stop()
        await until(lambda: availability.down)
        assert "cannot connect" in str(availability.reason)
        with pytest.raises(DatabaseUnavailable):
            sessions()  # refused before any wait
        pg.start()
        await until(lambda: availability.state == "ok", within=10)
        async with sessions() as db:
            assert await db.scalar(text("SELECT 1")) == 1
    finally:
        await availability.close()


async def until(condition, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.05)


@slow
async def test_sqlite_lock_wait_is_bounded_by_the_statement_deadline(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/locked.db"
    holder = make_engine(url)
    waiter = make_engine(url, Deadlines(statement=0.5))
    try:
        async with holder.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id int)"))
        async with holder.connect() as connection:
            await connection.exec_driver_sql("BEGIN IMMEDIATE")  # holds the write lock
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable, match="database is locked"):
                async with waiter.begin() as other:
                    await other.execute(text("INSERT INTO t VALUES (1)"))
            assert time.monotonic() - started < 0.5 + SLACK
            await connection.rollback()
        async with waiter.begin() as other:  # and it serves once the lock is gone
            await other.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        await holder.dispose()
        await waiter.dispose()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("database_statement_timeout", 0),
        ("database_connect_timeout", -1),
        ("database_pool_timeout", 61),
        ("database_health_interval", 0.01),
    ],
)
def test_deadline_settings_are_checked_in_one_line(name: str, value: float) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(**{name: value})
    message = str(caught.value)
    assert name.upper() in message and "\n" not in message
    assert "seconds" in message

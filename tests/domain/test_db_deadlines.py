"""Every database call has a deadline, and a down or hung database is `DatabaseUnavailable`.

Against a PostgreSQL cluster of the suite's own that the tests stop and freeze (SIGSTOP), and
against SQLite with a lock held by another connection. After each fault the same engine must
serve again by itself: no broken connection is left in the pool.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from asyncpg.exceptions._base import InternalClientError
from sqlalchemy import event, text
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
from upak.web.dependencies import get_db
from upak.web.services import Services

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


@slow
async def test_a_connection_left_mid_operation_is_dropped_without_opening_the_breaker(
    engine_and_trips: tuple[AsyncEngine, list[str]],
) -> None:
    """asyncpg's InternalClientError ("another operation is in progress") is one broken
    connection (sqlalchemy#13241): a 503 for the call that met it, the connection dropped,
    the breaker left closed. Seen in bench/chaos.py as 500s before."""
    engine, trips = engine_and_trips
    async with engine.connect() as connection:
        broken = await connection.scalar(text("SELECT pg_backend_pid()"))
        await connection.commit()
        adapter: Any = (await connection.get_raw_connection()).dbapi_connection

        def left_mid_operation(*_: Any) -> None:
            # What the driver says when a statement meets a protocol that a cut-off statement
            # left behind, raised through the dialect's own translation of driver errors.
            event.remove(engine.sync_engine, "do_execute", left_mid_operation)
            said = "cannot switch to state 15; another operation (2) is in progress"
            adapter._handle_exception(InternalClientError(said))

        event.listen(engine.sync_engine, "do_execute", left_mid_operation)
        with pytest.raises(DatabaseUnavailable, match="left mid-operation"):
            await connection.execute(text("SELECT 1"))
    assert trips == []
    async with engine.connect() as connection:  # the pool handed out a new connection
        assert await connection.scalar(text("SELECT pg_backend_pid()")) != broken


@slow
async def test_a_session_whose_connection_died_after_the_answer_closes_quietly(
    pg: PostgresServer,
    engine_and_trips: tuple[AsyncEngine, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """get_db's session closes after the response went out; a connection that died by then
    (the server restarted, a backend was terminated) must not raise into uvicorn, which
    logged it as "Exception in ASGI application" for a request already answered."""
    engine, _ = engine_and_trips
    services = cast(Services, SimpleNamespace(db=make_sessionmaker(engine)))
    dependency = get_db(services)
    db = await anext(dependency)
    pid = await db.scalar(text("SELECT pg_backend_pid()"))  # a transaction left open
    async with engine.connect() as other:
        await other.execute(text(f"SELECT pg_terminate_backend({pid})"))
    with caplog.at_level(logging.WARNING, "upak.web"), pytest.raises(StopAsyncIteration):
        await anext(dependency)
    assert "could not close cleanly" in caplog.text
    assert await select_one(engine) == 1


@slow
async def test_stops_hangs_and_cancellations_under_load_only_ever_raise_unavailable(
    pg: PostgresServer,
) -> None:
    """Queries from 8 tasks, and 4 more cancelled at random mid-query (clients hanging up),
    while the server is frozen and stopped twice: every failure is DatabaseUnavailable (a
    503 with Retry-After), none another error (a 500), and the engine serves after."""
    engine = make_engine(pg.new_database(), DEADLINES)
    failures: Counter[str] = Counter()
    running = True

    async def query() -> None:
        while running:
            try:
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT pg_sleep(0.01)"))
            except DatabaseUnavailable:
                await asyncio.sleep(0.01)
            except Exception as exc:
                failures[f"{type(exc).__name__}: {exc}"[:200]] += 1

    async def cancelled_mid_query() -> None:
        while running:
            task = asyncio.create_task(query())
            await asyncio.sleep(random.random() * 0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    tasks = [asyncio.create_task(query()) for _ in range(8)]
    tasks += [asyncio.create_task(cancelled_mid_query()) for _ in range(4)]
    try:
        for _ in range(2):
            await asyncio.sleep(1)
            pg.pause()
            await asyncio.sleep(2)
            pg.resume()
            await asyncio.sleep(1)
            pg.stop()
            await asyncio.sleep(1)
            pg.start()
        await asyncio.sleep(1)
    finally:
        running = False
        await asyncio.gather(*tasks, return_exceptions=True)
    try:
        assert not failures, failures
        assert await select_one(engine) == 1
    finally:
        await engine.dispose()


async def until(condition, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.05)


@slow
async def test_sqlite_lock_wait_is_bounded_by_the_statement_deadline(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/locked.db"
    holder = make_engine(url)
    trips: list[str] = []
    waiter = make_engine(url, Deadlines(statement=0.5), on_unavailable=trips.append)
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
            # Contention for this call, not an outage: the breaker stays closed.
            assert trips == []
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

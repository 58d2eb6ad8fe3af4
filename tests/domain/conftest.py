"""Domain tests run on SQLite, and on PostgreSQL too when one answers on 127.0.0.1:5432.

Each PostgreSQL test gets a schema of its own in database `test` (dropped afterwards), so
runs side by side never see each other's tables.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from upak.domain.db import make_engine, make_sessionmaker, upgrade
from upak.domain.passwords import Passwords, fast_passwords_for_tests

PG_URL = os.environ.get("UPAK_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


async def _pg_reachable() -> bool:
    import asyncpg

    try:
        conn = await asyncio.wait_for(
            asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql")), 2
        )
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """(url, engine) of an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/upak.db"
        engine = make_engine(url)
        yield url, engine
        await engine.dispose()
        return
    if not await _pg_reachable():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 (database test, user postgres)")
    schema = f"upak_t{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_URL)
    async with admin.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine = make_engine(PG_URL, connect_args={"server_settings": {"search_path": schema}})
    try:
        yield PG_URL, engine
    finally:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.dispose()


@pytest.fixture
async def db_engine(db_url_engine: tuple[str, AsyncEngine]) -> AsyncEngine:
    return db_url_engine[1]


@pytest.fixture
async def db(db_engine: AsyncEngine) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A migrated database's sessionmaker."""
    await upgrade(db_engine)
    yield make_sessionmaker(db_engine)


@pytest.fixture
def passwords() -> Passwords:
    return fast_passwords_for_tests()

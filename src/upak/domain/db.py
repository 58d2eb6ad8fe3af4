"""The relational database: SQLAlchemy 2 async, SQLite by default, PostgreSQL via DATABASE_URL.

Schema changes go through the Alembic migrations in `upak/domain/migrations/`; `upgrade()` runs
them to head, at start-up (the app's lifespan) or from `upak db upgrade`. Several worker
processes may start at once, so the upgrade holds a lock: PostgreSQL's advisory lock, or a
lock file beside a SQLite database.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import StaticPool

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant works; it only has to be the same in every process that migrates this database.
_PG_MIGRATION_LOCK = 0x75_70_61_6B  # "upak"


class Base(DeclarativeBase):
    """Every table of the domain. Schema changes go through Alembic migrations."""


class DatabaseError(Exception):
    """The database could not be reached or migrated. The message is one line."""


def redacted(url: str) -> str:
    """The database URL with its password hidden, for logs and CLI output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL: say so without echoing it
        return "<unparseable DATABASE_URL>"


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


# The async driver for each database we support, so a plain `postgresql://` URL works too.
_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


def async_url(url: str) -> str:
    """DATABASE_URL with its async driver; ValueError (password-free) when it is unusable."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ValueError("not a database URL") from None
    backend = parsed.get_backend_name()
    if backend == "postgres":  # Heroku-style spelling
        parsed, backend = parsed.set(drivername="postgresql"), "postgresql"
    driver = _ASYNC_DRIVERS.get(backend)
    if driver is None:
        raise ValueError(f"the database {backend!r} is not supported")
    if parsed.get_driver_name() != driver:
        parsed = parsed.set(drivername=f"{backend}+{driver}")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An engine for DATABASE_URL. `sqlite+aiosqlite://` is one in-memory database per engine."""
    url = async_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if _sqlite_file(url) is None:
            # One shared connection, or each connection would see its own empty database.
            kwargs.setdefault("poolclass", StaticPool)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 15)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: worker processes read while one writes; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _open_lock_file(database: Path) -> BinaryIO:
    return open(database.with_name(database.name + ".migrate.lock"), "a+b")


@contextlib.asynccontextmanager
async def _file_lock(database: Path) -> AsyncIterator[None]:
    """An exclusive lock beside a SQLite file, waited for in a thread (not on the loop)."""
    handle = _open_lock_file(database)
    try:
        await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing the file releases the lock


def migrate(connection: Connection, revision: str = "head") -> None:
    """Run the migrations on an open (sync) connection; `upgrade()` is the async way in."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # env.py migrates on this connection instead of opening its own.
    config.attributes["connection"] = connection
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    command.upgrade(config, revision)


def head_revision() -> str:
    """The newest revision of the migrations shipped with this code."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _current_on(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> str | None:
    """Apply the migrations up to `revision`; returns the revision the database is at."""
    sqlite_file = _sqlite_file(str(engine.url))
    lock = _file_lock(sqlite_file) if sqlite_file else contextlib.nullcontext()
    try:
        async with lock, engine.begin() as connection:
            await connection.run_sync(migrate, revision)
        async with engine.connect() as connection:
            return await connection.run_sync(_current_on)
    except OSError as exc:
        raise DatabaseError(
            f"the database at {redacted(str(engine.url))} could not be reached: {exc}"
        ) from None
    except Exception as exc:
        if type(exc).__module__.startswith(("sqlalchemy", "asyncpg", "sqlite3", "aiosqlite")):
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DatabaseError(
                f"the database at {redacted(str(engine.url))} could not be migrated: {reason}"
            ) from None
        raise

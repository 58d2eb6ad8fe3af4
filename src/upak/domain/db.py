"""The relational database: SQLAlchemy 2 async, SQLite by default, PostgreSQL via DATABASE_URL.

Every call has a deadline (`Deadlines`): connecting, waiting for a pooled connection, and each
statement. A call that misses one, or finds the server gone, raises `DatabaseUnavailable`
(the web layer answers 503 with Retry-After) and its connection is thrown away, so a hung or
restarted server never leaves a broken connection in the pool. `on_unavailable` hears of
each such failure (the availability breaker, `upak.domain.availability`).

Schema changes go through the Alembic migrations in `upak/domain/migrations/`; `upgrade()` runs
them to head, at start-up (the app's lifespan) or from `upak db upgrade`. Several worker
processes may start at once, so the upgrade holds a lock: PostgreSQL's advisory lock, or a
lock file beside a SQLite database.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, ExceptionContext, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import StaticPool

from upak.config import async_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant works; it only has to be the same in every process that migrates this database.
_PG_MIGRATION_LOCK = 0x75_70_61_6B  # "upak"


class Base(DeclarativeBase):
    """Every table of the domain. Schema changes go through Alembic migrations."""


class DatabaseError(Exception):
    """The database could not be reached or migrated. The message is one line."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot serve now: down, hung past a deadline, or shutting down.

    Nothing of the call took effect that was not committed before it. The message is one
    line and names no URL or password; retrying later is the right answer.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the database is unavailable: {reason}")
        self.reason = reason

    @property
    def contention(self) -> bool:
        """Another writer held the lock past this call's deadline: the transaction was
        rolled back whole and may simply run again (the database itself is serving)."""
        return self.reason in _CONTENTION


@dataclass(frozen=True)
class Deadlines:
    """How long one database call may wait, in seconds, at each step."""

    connect: float = 3.0  # a new connection (TCP, TLS, authentication)
    checkout: float = 3.0  # a pooled connection, when all are in use
    statement: float = 5.0  # one statement (PostgreSQL), or a lock wait (SQLite)

    @property
    def call(self) -> float:
        """The longest a call that respects every deadline can take, for outer bounds."""
        return self.checkout + self.connect + 2 * self.statement


# `upak db upgrade` and Alembic's own runs: a migration may rewrite a big table, which no
# request deadline should cut short. Connecting is still bounded.
MIGRATION_DEADLINES = Deadlines(connect=10.0, checkout=10.0, statement=3600.0)

# SQLSTATE classes that mean "the server cannot serve now", not "this statement is wrong":
# 08 connection exception, 53 insufficient resources, 57 operator intervention (shutdown,
# starting up, a cancelled statement), 58 system error.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57", "58")
# SQLite says the same in words: a lock held past the busy timeout, a file it cannot open.
_UNAVAILABLE_SQLITE = ("database is locked", "unable to open database file", "disk i/o error")
# Of those, the one that is contention for this call, not a database that cannot serve.
_CONTENTION = ("database is locked",)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, the driver error SQLAlchemy wrapped, and what caused each."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack += [getattr(current, "orig", None), current.__cause__, current.__context__]


def unavailable_reason(exc: BaseException) -> str | None:
    """Why `exc` means the database cannot serve now, in a few words; None when it does not
    (a constraint, a bad statement: the request's or the code's fault, not the server's)."""
    for cause in _causes(exc):
        if isinstance(cause, DatabaseUnavailable):
            return cause.reason
        if isinstance(cause, TimeoutError):
            return "no answer within the deadline"
        if isinstance(cause, OSError):  # refused, reset, unreachable: the socket, not SQL
            return f"cannot connect ({type(cause).__name__})"
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES:
            return f"the server refused to serve (SQLSTATE {sqlstate})"
        name = type(cause).__name__
        if name in ("ConnectionDoesNotExistError", "InterfaceError") and "closed" in str(cause):
            return "the connection was closed"
        if type(cause).__module__.startswith("sqlite3"):
            said = str(cause).lower()
            for words in _UNAVAILABLE_SQLITE:
                if words in said:
                    return words
    return None


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
def make_engine(
    url: str,
    deadlines: Deadlines | None = None,
    on_unavailable: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> AsyncEngine:
    """An engine for DATABASE_URL. `sqlite+aiosqlite://` is one in-memory database per engine.

    Every call is bounded by `deadlines`; a call that finds the database unavailable raises
    `DatabaseUnavailable` and tells `on_unavailable` why.
    """
    deadlines = deadlines or Deadlines()
    url = async_url(url)
    parsed = make_url(url)
    connect_args = kwargs.setdefault("connect_args", {})
    if parsed.get_backend_name() == "sqlite":
        if _sqlite_file(url) is None:
            # One shared connection, or each connection would see its own empty database.
            kwargs.setdefault("poolclass", StaticPool)
        else:
            kwargs.setdefault("pool_timeout", deadlines.checkout)
        # SQLite's busy timeout: how long a statement waits for another process's lock.
        connect_args.setdefault("timeout", deadlines.statement)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    else:
        # asyncpg's own deadlines: `timeout` for connecting, `command_timeout` for each
        # statement (the checkout ping included), so a hung server costs one bounded wait.
        connect_args.setdefault("timeout", deadlines.connect)
        connect_args.setdefault("command_timeout", deadlines.statement)
        kwargs.setdefault("pool_timeout", deadlines.checkout)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine.pool, "invalidate", _abort_invalidated)
    unavailable = _reporter(on_unavailable)
    _guard(engine, unavailable)
    if parsed.get_backend_name() != "sqlite":
        _ping_on_checkout(engine, unavailable)
    return engine


def _reporter(
    on_unavailable: Callable[[str], None] | None,
) -> Callable[[str], DatabaseUnavailable]:
    def unavailable(reason: str) -> DatabaseUnavailable:
        if on_unavailable is not None:
            on_unavailable(reason)
        return DatabaseUnavailable(reason)

    return unavailable


def _left_mid_operation(exc: BaseException) -> bool:
    """asyncpg's "cannot switch to state N; another operation is in progress": a statement
    cut off (a cancelled request, a server that went away mid-reply) left the connection's
    protocol mid-operation, and SQLAlchemy may hand it out again (sqlalchemy#13241). It can
    never serve again, whatever the server's state."""
    return any(type(cause).__name__ == "InternalClientError" for cause in _causes(exc))


def _ping_on_checkout(engine: AsyncEngine, unavailable: Callable[[str], Exception]) -> None:
    """SQLAlchemy's `pool_pre_ping`, with the difference that matters here.

    A pooled connection may be dead (the server restarted: reconnect, the caller never
    knows) or hung (the server stopped answering: reconnecting would only wait again).
    `pool_pre_ping` lets the driver's timeout escape as a bare TimeoutError; this answers
    DatabaseUnavailable for a hung server and a fresh connection for a dead one.
    """
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "connect")
    def _fresh(_dbapi_connection: Any, record: Any) -> None:
        record.info["fresh"] = True

    @event.listens_for(pool, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.pop("fresh", False):
            return  # it has just answered the connection handshake
        try:
            dbapi_connection.ping()
        except Exception as exc:
            if any(isinstance(cause, TimeoutError) for cause in _causes(exc)):
                raise unavailable("no answer within the deadline") from None
            # Dead: the pool drops it and connects anew (do_connect bounds that).
            raise DisconnectionError("the pooled connection is dead") from None


def _guard(engine: AsyncEngine, unavailable: Callable[[str], Exception]) -> None:
    """Turn the failures that mean "the database cannot serve now" into DatabaseUnavailable.

    A statement's failure passes `handle_error`; marking it a disconnect makes SQLAlchemy
    drop the connection and every pooled connection older than it, so the first call after
    a restart or a hang gets a fresh connection instead of a dead one. Connecting fails
    outside that hook (the pool raises the driver's error as it is), so connecting goes
    through `do_connect` (SQLAlchemy's documented way to make the connection ourselves).
    """

    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> BaseException | None:
        if _left_mid_operation(context.original_exception):
            # One broken connection, not a database that cannot serve: drop it and answer
            # this call 503 + Retry-After, without opening the breaker for every request.
            context.is_disconnect = True
            return DatabaseUnavailable("a pooled connection was left mid-operation")
        reason = unavailable_reason(context.original_exception)
        if reason is None:
            return None
        if reason in _CONTENTION:
            # Another writer held SQLite's lock past this call's deadline. The connection is
            # sound and the database answers (the breaker's probe, a read, would pass at
            # once): opening the breaker would only refuse every request of this worker
            # until the next probe, as bench/chaos.py saw (6 lock waits, 170 refusals).
            return DatabaseUnavailable(reason)
        context.is_disconnect = True
        return unavailable(reason)

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            reason = unavailable_reason(exc)
            if reason is None:
                raise
            raise unavailable(reason) from None


def _abort_invalidated(dbapi_connection: Any, _record: Any, _exc: BaseException | None) -> None:
    # SQLAlchemy closes an invalidated asyncpg connection politely, waiting up to 2 s for a
    # server that may be hung; a connection we are throwing away needs no goodbye.
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and not driver.is_closed():
        driver.terminate()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: worker processes read while one writes; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class _GuardedSessionmaker(async_sessionmaker[AsyncSession]):
    """An `async_sessionmaker` that asks `admit()` before each new session."""

    def __init__(self, engine: AsyncEngine, admit: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(engine, **kwargs)
        self.admit = admit

    def __call__(self, **local_kw: Any) -> AsyncSession:
        self.admit()  # raises (DatabaseUnavailable) to refuse at once
        return super().__call__(**local_kw)


def make_sessionmaker(
    engine: AsyncEngine, admit: Callable[[], None] | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions on `engine`; `admit` (the availability breaker) may refuse each one."""
    if admit is None:
        return async_sessionmaker(engine, expire_on_commit=False)
    return _GuardedSessionmaker(engine, admit, expire_on_commit=False)


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


# A migration that meets another writer's SQLite lock (a sibling worker already serving
# while this one checks the schema at start) runs again, after these pauses, in seconds.
_UPGRADE_RETRY_PAUSES = (0.05, 0.2, 0.5)


async def _upgrade_once(engine: AsyncEngine, revision: str) -> str | None:
    sqlite_file = _sqlite_file(str(engine.url))
    lock = _file_lock(sqlite_file) if sqlite_file else contextlib.nullcontext()
    async with lock, engine.begin() as connection:
        await connection.run_sync(migrate, revision)
    if sqlite_file is not None:
        # The migration ran with foreign keys off (see migrations/env.py): a fresh pool,
        # whose connections turn them on again as they open.
        await engine.dispose()
    async with engine.connect() as connection:
        return await connection.run_sync(_current_on)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> str | None:
    """Apply the migrations up to `revision`; returns the revision the database is at."""
    try:
        for pause in _UPGRADE_RETRY_PAUSES:
            try:
                return await _upgrade_once(engine, revision)
            except DatabaseUnavailable as exc:
                if not exc.contention:
                    raise
                # Alembic's upgrade is idempotent: what committed stays, the rest runs again.
                await asyncio.sleep(pause)
        return await _upgrade_once(engine, revision)
    except DatabaseUnavailable as exc:
        raise DatabaseError(
            f"the database at {redacted(str(engine.url))} could not be reached: {exc.reason}"
        ) from None
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

"""Alembic environment: migrates the connection `upak.domain.db.upgrade` hands over, or, run
by the `alembic` command with `-x url=...` (or DATABASE_URL), a connection of its own."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from upak.domain import import_models
from upak.domain.db import MIGRATION_DEADLINES, Base, make_engine

import_models()  # every table of every domain module, so autogenerate sees them all
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode alters a SQLite table by copying it, dropping the original and renaming
        # the copy; with foreign keys on, that DROP would cascade into every table that
        # references it (payments: ON DELETE CASCADE) and empty it. Off before the first
        # statement (inside a transaction the pragma is a no-op); `upgrade` closes this
        # connection afterwards so none with foreign keys off goes back to the pool.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters tables by copying them; batch mode makes that work.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
            raise RuntimeError("the migration left rows whose foreign key points nowhere")


async def _run_own_connection(url: str) -> None:
    engine = make_engine(url, MIGRATION_DEADLINES)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("UPAK's migrations run online: use `upak db upgrade`")

given = context.config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "DATABASE_URL", "sqlite+aiosqlite:///./upak.db"
    )
    asyncio.run(_run_own_connection(url))

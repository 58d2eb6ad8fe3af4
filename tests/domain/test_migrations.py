"""Migrations: the first revision builds exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from upak.cli import app as cli
from upak.domain import import_models
from upak.domain.db import MIGRATIONS, Base, Deadlines, head_revision, make_engine, upgrade


async def test_upgrade_builds_the_models_schema(db_engine: AsyncEngine) -> None:
    assert await upgrade(db_engine) == head_revision()
    import_models()

    def differences(connection):
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)

    async with db_engine.connect() as connection:
        assert await connection.run_sync(differences) == []
        tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
    assert "users" in tables


async def test_the_first_revision_is_0001_users(db_engine: AsyncEngine) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    base = ScriptDirectory.from_config(config).get_base()
    assert base == "0001_users"
    assert await upgrade(db_engine, "0001_users") == "0001_users"
    async with db_engine.connect() as connection:
        tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
    assert "users" in tables and "payments" not in tables
    assert await upgrade(db_engine) == head_revision()


async def test_upgrade_is_idempotent_and_safe_side_by_side(db_engine: AsyncEngine) -> None:
    results = await asyncio.gather(*(upgrade(db_engine) for _ in range(3)))
    assert results == [head_revision()] * 3
    assert await upgrade(db_engine) == head_revision()


async def test_two_processes_worth_of_engines_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    engines = [make_engine(url) for _ in range(2)]
    try:
        assert await asyncio.gather(*(upgrade(e) for e in engines)) == [head_revision()] * 2
    finally:
        for engine in engines:
            await engine.dispose()


def test_cli_upgrade(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/cli.db")
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"is at revision {head_revision()}" in result.output
    assert (tmp_path / "cli.db").exists()


def test_cli_upgrade_unreachable_database_is_one_line(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql://upak:hunter2secret@127.0.0.1:1/upak")
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 1
    assert "could not be reached" in result.output
    assert "hunter2secret" not in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_bad_database_url_is_a_config_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "mysql://root:hunter2secret@db/upak")
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "DATABASE_URL is invalid" in result.output and "hunter2secret" not in result.output


async def test_0003_gives_existing_rows_their_case_folded_key(db_engine: AsyncEngine) -> None:
    from sqlalchemy import text

    assert await upgrade(db_engine, "0002_payments") == "0002_payments"
    async with db_engine.begin() as connection:
        for email in ("Alice@example.com", "bob@example.com", "alice@example.com"):
            await connection.execute(
                text("INSERT INTO users (email, password_hash) VALUES (:e, 'h')"), {"e": email}
            )
    assert await upgrade(db_engine) == head_revision()
    async with db_engine.connect() as connection:
        rows = (
            await connection.execute(text("SELECT id, email, email_key FROM users ORDER BY id"))
        ).all()
    # The spelling stays; the oldest of two case-twins keeps the key, the later one cannot
    # log in by email (its key matches no address) until an operator merges it.
    assert [(r.email, r.email_key) for r in rows[:2]] == [
        ("Alice@example.com", "alice@example.com"),
        ("bob@example.com", "bob@example.com"),
    ]
    assert rows[2].email == "alice@example.com"
    assert rows[2].email_key == f" duplicate {rows[2].id} alice@example.com"


async def test_the_payment_lifecycle_revision_upgrades_recorded_payments(
    db_engine: AsyncEngine,
) -> None:
    """Payments recorded before 0004 (all of them succeeded) keep their meaning after it."""
    from sqlalchemy import text

    assert await upgrade(db_engine, "0002_payments") == "0002_payments"
    async with db_engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO users (id, email, password_hash) VALUES (1, 'a@x.io', 'h')")
        )
        for n, status in enumerate(("succeeded", "SUCCEEDED")):
            await connection.execute(
                text(
                    "INSERT INTO payments (provider, provider_payment_id, user_id, plan, "
                    "amount_minor, currency, status, created_at) VALUES ('yookassa', :pid, 1, "
                    "'start', 49000, 'RUB', :status, '2026-01-01 00:00:00')"
                ),
                {"pid": f"old-{n}", "status": status},
            )
    assert await upgrade(db_engine) == head_revision()
    async with db_engine.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT status, updated_at, refund_id FROM payments ORDER BY id")
            )
        ).all()
    assert [r[0] for r in rows] == ["succeeded", "succeeded"]
    assert all(r[1] is not None and r[2] is None for r in rows)


async def test_sqlite_connections_keep_foreign_keys_on_after_a_migration(tmp_path: Path) -> None:
    """The migrations run with SQLite's foreign keys off (a batch table copy would otherwise
    cascade its DROP into the payments); the connections the app then uses have them on."""
    from sqlalchemy import text

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/upak.db")
    try:
        await upgrade(engine)
        async with engine.connect() as connection:
            assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_a_migration_that_meets_another_writers_lock_runs_again(tmp_path: Path) -> None:
    """A migration while another process writes to the SQLite file (`upak db upgrade` beside
    a serving worker): it meets the lock past its busy timeout, and runs again instead of
    failing (Alembic's upgrade is idempotent)."""
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    serving = make_engine(url)
    starting = make_engine(url, Deadlines(statement=0.2))
    try:
        async with serving.connect() as writer:
            await writer.exec_driver_sql("BEGIN IMMEDIATE")  # a write in flight

            async def finish_the_write() -> None:
                await asyncio.sleep(0.4)  # past the first attempt's 0.2 s wait
                await writer.rollback()

            done = asyncio.create_task(finish_the_write())
            assert await upgrade(starting) == head_revision()
            await done
    finally:
        await serving.dispose()
        await starting.dispose()

"""`upak db …`: the relational database's migrations."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

app = typer.Typer(
    help="The relational database (users, payments): migrations.", no_args_is_help=True
)


@app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply the migrations to DATABASE_URL (the service also does this at start-up)."""
    from upak.cli import settings_or_exit
    from upak.domain.db import MIGRATION_DEADLINES, DatabaseError, make_engine, redacted
    from upak.domain.db import upgrade as run_upgrade

    settings = settings_or_exit()
    url = settings.database_url.get_secret_value()

    async def main() -> str | None:
        engine = make_engine(url, MIGRATION_DEADLINES)
        try:
            return await run_upgrade(engine, revision)
        finally:
            await engine.dispose()

    try:
        current = asyncio.run(main())
    except DatabaseError as exc:
        typer.echo(f"upak: {exc}", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # e.g. an unknown revision or a malformed DATABASE_URL
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = reason.replace(url, redacted(url))  # never echo a password in the URL
        typer.echo(f"upak: the migration failed: {reason}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"database {redacted(url)} is at revision {current}")

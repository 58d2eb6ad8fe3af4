"""`upak db …` (the relational database's migrations) and `upak payments reconcile`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from upak.config import Settings

app = typer.Typer(
    help="The relational database (users, payments): migrations.", no_args_is_help=True
)


@app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply the migrations to DATABASE_URL (the service also does this at start-up)."""
    from upak.command import settings_or_exit
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


payments_app = typer.Typer(
    help="Payments through YooKassa: reconcile what notifications missed.", no_args_is_help=True
)

# Notifications usually arrive within seconds; a payment pending longer than this has likely
# lost its notification (or the buyer is still on YooKassa's page: asking again is harmless).
DEFAULT_OLDER_THAN = 300


@payments_app.command()
def reconcile(
    older_than: Annotated[
        float,
        typer.Option(
            "--older-than",
            min=0,
            help="Ask about payments pending for more than this many seconds.",
        ),
    ] = DEFAULT_OLDER_THAN,
) -> None:
    """Ask YooKassa's API about pending payments and apply what it says (safe from a timer)."""
    from upak.command import settings_or_exit

    settings = settings_or_exit()
    if settings.yookassa_shop_id is None:
        typer.echo(
            "upak: YooKassa is not configured: set YOOKASSA_SHOP_ID and YOOKASSA_SECRET_KEY",
            err=True,
        )
        raise typer.Exit(2)
    try:
        summary = asyncio.run(_reconcile(settings, older_than))
    except Exception as exc:
        typer.echo(f"upak: reconcile stopped: {_one_line(exc, settings)}", err=True)
        raise typer.Exit(1) from None
    typer.echo(summary)


async def _reconcile(settings: Settings, older_than: float) -> str:
    from datetime import UTC, datetime

    from upak.domain.db import make_engine, make_sessionmaker
    from upak.domain.payment_events import Effects
    from upak.domain.payment_events import reconcile as run_reconcile
    from upak.domain.yookassa_api import api_from_settings
    from upak.features.cache import Cache
    from upak.store import KeySpace, build_store

    engine = make_engine(settings.database_url.get_secret_value())
    api = api_from_settings(settings)
    assert api is not None
    store = build_store(settings)
    await store.start()
    # A payment applied here must drop the user's cached /me, as the webhook's does.
    cache = Cache(store, KeySpace(settings.redis_key_prefix), default_ttl=settings.redis_ttl)
    try:
        effects = Effects(
            make_sessionmaker(engine),
            now=datetime.now(UTC),
            production=settings.production,
            hooks=(cache.invalidate_user,),
        )
        report = await run_reconcile(effects, api, older_than=older_than)
    finally:
        await api.close()
        await store.close()
        await engine.dispose()
    found = ", ".join(f"{n} {what}" for what, n in sorted(report.outcomes.items()))
    return f"reconciled {report.checked} pending payment(s)" + (f": {found}" if found else "")


def _one_line(exc: Exception, settings: Settings) -> str:
    from upak.domain.db import redacted

    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    url = settings.database_url.get_secret_value()
    return reason.replace(url, redacted(url))

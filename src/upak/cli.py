"""`upak`: serve the app, and operate its Redis (`upak redis …`)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from upak.config import ConfigError, Settings, load_settings
from upak.domain.cli import app as db_app
from upak.domain.cli import payments_app
from upak.ops.cli import redis_app

app = typer.Typer(
    name="upak",
    help="UPAK Backend: serve the API and operate its Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """UPAK Backend: serve the API and operate its Redis."""


app.add_typer(redis_app, name="redis")


def settings_or_exit(**overrides: object) -> Settings:
    """Settings for a command; a bad value is one line on stderr and exit status 2."""
    try:
        return load_settings(**overrides)  # type: ignore[arg-type]
    except ConfigError as exc:
        typer.echo(f"upak: configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (UPAK_HOST).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to listen on (UPAK_PORT).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, max=64, help="Worker processes (UPAK_WORKERS).")
    ] = None,
) -> None:
    """Run UPAK Backend (on the in-memory store when no Redis is reachable)."""
    import uvicorn

    from upak.logs import configure_logging, uvicorn_log_config

    settings = settings_or_exit()
    host = host or settings.upak_host
    port = port or settings.upak_port
    workers = workers or settings.upak_workers
    # Workers re-read settings from the environment: pass the worker count on, so the
    # rate limiter's fallback divisor defaults to it.
    os.environ["UPAK_WORKERS"] = str(workers)
    configure_logging(settings)
    uvicorn.run(
        "upak.web.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        log_config=uvicorn_log_config(settings) or uvicorn.config.LOGGING_CONFIG,
        proxy_headers=False,  # client identity is decided by TRUSTED_PROXIES, not uvicorn
        server_header=False,
    )


app.add_typer(db_app, name="db")
app.add_typer(payments_app, name="payments")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

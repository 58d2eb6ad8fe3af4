"""`upak`: serve the app, and operate its Redis (`upak redis …`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from upak.command import settings_or_exit
from upak.config import Settings
from upak.domain.cli import app as db_app
from upak.domain.cli import payments_app
from upak.ops.cli import redis_app

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client in every worker

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


@contextlib.contextmanager
def metrics_dir(workers: int) -> Iterator[None]:
    """A clean PROMETHEUS_MULTIPROC_DIR for the workers (see upak.web.metrics), made here
    with several workers; one named in the environment is emptied instead. One worker keeps
    its metrics in its own memory: it already is the whole service."""
    named = os.environ.get(MULTIPROC_ENV)
    if not named and workers == 1:
        yield
        return
    path = Path(named) if named else Path(tempfile.mkdtemp(prefix="upak-metrics-"))
    try:
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # a previous run's counters would be added in
            stale.unlink()
    except OSError as exc:
        typer.echo(f"upak: cannot prepare {MULTIPROC_ENV}={path}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield
    finally:
        if not named:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(path, ignore_errors=True)


def refuse_bad_redis_credentials(settings: Settings) -> None:
    """In production, Redis refusing our credentials is a configuration error, not an outage:
    the service would otherwise run degraded (per-process replay protection and sessions)
    until someone notices. One line on stderr and exit status 2. An unreachable Redis is an
    outage: the service starts on memory and switches over when Redis answers."""
    import redis.exceptions as rex

    from upak.connect import sync_client

    client = sync_client(settings, socket_timeout=2.0, connect_timeout=2.0)
    try:
        client.ping()
    except rex.AuthenticationError:
        refused = True
    except rex.ResponseError as exc:  # NOAUTH / WRONGPASS on some servers and versions
        refused = any(word in str(exc).upper() for word in ("NOAUTH", "WRONGPASS", "AUTH"))
    except (rex.RedisError, OSError):
        refused = False
    else:
        refused = False
    finally:
        client.close()
    if refused:
        typer.echo(
            f"upak: configuration error: Redis at {settings.redis.redacted_url()} refused the "
            "credentials; check REDIS_USERNAME and REDIS_PASSWORD (or the ones in REDIS_URL)",
            err=True,
        )
        raise typer.Exit(2)


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
    if settings.production:
        refuse_bad_redis_credentials(settings)
    host = host or settings.upak_host
    port = port or settings.upak_port
    workers = workers or settings.upak_workers
    # Workers re-read settings from the environment: pass the worker count on, so the
    # rate limiter's fallback divisor defaults to it.
    os.environ["UPAK_WORKERS"] = str(workers)
    configure_logging(settings)
    with metrics_dir(workers):
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

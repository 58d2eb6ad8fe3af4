"""What every command of the `upak` CLI shares: its settings, or one line and exit status 2.

Its own module so that the command groups (`upak db`, `upak payments`) need not import the
top-level CLI that mounts them.
"""

from __future__ import annotations

import typer

from upak.config import ConfigError, Settings, load_settings


def settings_or_exit(**overrides: object) -> Settings:
    """Settings for a command; a bad value is one line on stderr and exit status 2."""
    try:
        return load_settings(**overrides)  # type: ignore[arg-type]
    except ConfigError as exc:
        typer.echo(f"upak: configuration error: {exc}", err=True)
        raise typer.Exit(2) from None

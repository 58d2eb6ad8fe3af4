"""`upak redis …`: the operator's commands, against the Redis the settings point at.

Output is readable tables by default and JSON with `--json`. Exit status: 0 when everything
is fine, 1 when a check fails or an operation cannot be done, 2 for a configuration or usage
error, 130 on Ctrl-C. A failure is always one line on stderr (and an `error` field in JSON),
never a traceback: every command body runs inside `_boundary`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import redis.exceptions as rex
import typer
from rich.console import Console

from upak.config import ConfigError, load_settings
from upak.ops.diagnose import OpsError, explain, os_error
from upak.ops.server import DEFAULT_SCAN_LIMIT, Ops

redis_app = typer.Typer(
    help="Operate UPAK's Redis: check, info, monitor, audit, config, backup, restore.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@dataclass
class _Options:
    env_file: str | None
    ops_username: str | None
    ops_password: str | None
    config_command: str
    timeout: float

    def ops(self) -> Ops:
        try:
            settings = load_settings(env_file=self.env_file)
        except ConfigError as exc:
            raise OpsError(f"configuration error: {exc}", exit_code=2) from None
        return Ops(
            settings=settings,
            ops_username=self.ops_username,
            ops_password=self.ops_password,
            config_command=self.config_command,
            timeout=self.timeout,
        )


@redis_app.callback()
def _options(
    ctx: typer.Context,
    env_file: Annotated[
        str, typer.Option("--env-file", help="The .env file to read REDIS_* from.")
    ] = ".env",
    ops_user: Annotated[
        str | None,
        typer.Option(
            "--ops-user",
            envvar="UPAK_OPS_USERNAME",
            help="ACL user for inspection and backups (password: UPAK_OPS_PASSWORD). "
            "Default: the app's REDIS_USERNAME / REDIS_PASSWORD.",
        ),
    ] = None,
    config_command: Annotated[
        str,
        typer.Option(
            "--config-command",
            envvar="UPAK_CONFIG_COMMAND",
            help="The name CONFIG was renamed to with rename-command, if it was.",
        ),
    ] = "CONFIG",
    timeout: Annotated[
        float, typer.Option(min=0.1, max=120, help="Socket timeout in seconds.")
    ] = 5.0,
) -> None:
    # The ops password only comes from the environment: an option would show it in `ps`.
    password = os.environ.get("UPAK_OPS_PASSWORD") or None
    ctx.obj = _Options(
        env_file=env_file if Path(env_file).is_file() else None,
        ops_username=ops_user,
        ops_password=password,
        config_command=config_command,
        timeout=timeout,
    )


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str, sort_keys=False))


@contextmanager
def _boundary(name: str, as_json: bool, ops: Ops | None = None) -> Iterator[None]:
    """Turn any failure inside a command into one line and a non-zero exit."""
    try:
        yield
    except typer.Exit:
        raise
    except OpsError as exc:
        _fail(name, str(exc), exc.exit_code, as_json)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except rex.RedisError as exc:
        message = explain(exc, ops.settings) if ops is not None else str(exc)
        _fail(name, message, 1, as_json)
    except OSError as exc:
        _fail(name, os_error(exc), 1, as_json)
    except Exception as exc:  # the promise is "never a traceback"
        _fail(name, f"unexpected error ({type(exc).__name__}): {exc}", 1, as_json)


def _fail(name: str, message: str, code: int, as_json: bool) -> None:
    message = " ".join(message.split())
    if as_json:
        _emit_json({"ok": False, "command": name, "error": message})
    typer.echo(f"upak redis {name}: {message}", err=True)
    raise typer.Exit(code)


def _run(ctx: typer.Context, name: str, as_json: bool, body: Callable[[Ops], int]) -> None:
    options: _Options = ctx.obj
    code = 0
    with _boundary(name, as_json):
        ops = options.ops()
        with _boundary(name, as_json, ops):
            code = body(ops)
    if code:
        raise typer.Exit(code)


JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@redis_app.command()
def check(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """PING, SET/GET/DEL of a test key, version, mode, uptime, latency."""
    from upak.ops.check import render_check, run_check

    def body(ops: Ops) -> int:
        report = run_check(ops)
        if as_json:
            _emit_json(report.as_dict())
        else:
            render_check(report, _console())
        return 0 if report.ok else 1

    _run(ctx, "check", as_json, body)


def main() -> None:  # pragma: no cover - `python -m upak.ops.cli` for debugging
    try:
        redis_app()
    except KeyboardInterrupt:
        sys.exit(130)





@redis_app.command("info")
def info_command(
    ctx: typer.Context,
    section: Annotated[
        str | None,
        typer.Argument(help="server, clients, memory, stats, persistence or keyspace."),
    ] = None,
    scan_limit: Annotated[
        int, typer.Option(min=1, help="Stop counting UPAK keys after this many (SCAN).")
    ] = DEFAULT_SCAN_LIMIT,
    as_json: JsonOption = False,
) -> None:
    """The seed's monitoring sections as tables; hit ratio, memory, UPAK keys by feature."""
    from upak.ops.info import SECTIONS, collect, render_info

    def body(ops: Ops) -> int:
        if section is not None and section not in SECTIONS:
            raise OpsError(
                f"unknown section {section!r}: use one of {', '.join(SECTIONS)}", exit_code=2
            )
        report = collect(ops, section, scan_limit)
        if as_json:
            _emit_json(report.as_dict())
        else:
            render_info(report, _console())
        return 0

    _run(ctx, "info", as_json, body)


@redis_app.command()
def audit(
    ctx: typer.Context,
    allow_warnings: Annotated[
        bool, typer.Option("--allow-warnings", help="Exit 0 when nothing fails (warnings ok).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The seed's security and production settings on the live server: pass/warn/fail."""
    from upak.ops.audit import render_audit, run_audit

    def body(ops: Ops) -> int:
        report = run_audit(ops)
        if as_json:
            _emit_json({**report.as_dict(), "ok": report.ok(allow_warnings)})
        else:
            render_audit(report, _console())
        return 0 if report.ok(allow_warnings) else 1

    _run(ctx, "audit", as_json, body)

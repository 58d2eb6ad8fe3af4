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
from click.core import ParameterSource
from dotenv import dotenv_values
from rich.console import Console

from upak.config import ConfigError, load_settings
from upak.ops.backup import Progress
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
    env_path = env_file if Path(env_file).is_file() else None
    # The environment wins over the file, as for the app's own settings; the file is the one
    # `config --out` writes (upak-redis.env), which names the ops user and its password.
    from_file = _ops_settings_in(env_path)
    if ops_user is None:
        ops_user = from_file.get("UPAK_OPS_USERNAME")
    if ctx.get_parameter_source("config_command") is ParameterSource.DEFAULT:
        config_command = from_file.get("UPAK_CONFIG_COMMAND") or config_command
    # The ops password only comes from the environment or the file: an option would show it
    # in `ps`.
    password = os.environ.get("UPAK_OPS_PASSWORD") or from_file.get("UPAK_OPS_PASSWORD") or None
    ctx.obj = _Options(
        env_file=env_path,
        ops_username=ops_user,
        ops_password=password,
        config_command=config_command,
        timeout=timeout,
    )


def _ops_settings_in(env_file: str | None) -> dict[str, str]:
    """The UPAK_OPS_* / UPAK_CONFIG_COMMAND values of the .env file (empty ones dropped)."""
    if env_file is None:
        return {}
    try:
        values = dotenv_values(env_file)
    except (OSError, UnicodeDecodeError) as exc:
        # Before any command's boundary: say it in one line here.
        typer.echo(f"upak redis: cannot read {env_file}: {exc}", err=True)
        raise typer.Exit(2) from None
    wanted = ("UPAK_OPS_USERNAME", "UPAK_OPS_PASSWORD", "UPAK_CONFIG_COMMAND")
    return {name: value for name in wanted if (value := values.get(name))}


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


@redis_app.command()
def config(
    ctx: typer.Context,
    production: Annotated[
        bool, typer.Option("--production", help="TLS only, AOF, the seed's rename-command.")
    ] = False,
    check_file: Annotated[
        Path | None,
        typer.Option("--check", help="Validate FILE by starting a throwaway redis-server on it."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write redis.conf, users.acl and upak-redis.env (0600) into DIR."),
    ] = None,
    data_dir: Annotated[str, typer.Option(help="Redis `dir`.")] = "/var/lib/redis",
    acl_file: Annotated[str, typer.Option(help="Where the ACL file will live.")] = (
        "/etc/redis/users.acl"
    ),
    logfile: Annotated[str, typer.Option(help="Redis `logfile`.")] = (
        "/var/log/redis/redis-server.log"
    ),
    tls_dir: Annotated[str, typer.Option(help="Holds redis.crt, redis.key, ca.crt.")] = (
        "/etc/redis/tls"
    ),
    maxmemory: Annotated[str, typer.Option(help="Redis `maxmemory`.")] = "256mb",
    port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="The port Redis listens on (TLS port with --production)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print a hardened redis.conf and ACL file, or validate a config with --check FILE."""
    from upak.ops.conf import ConfOptions, check_config_file, generate

    if check_file is not None:
        with _boundary("config", as_json):
            result = check_config_file(check_file)
            if as_json:
                _emit_json(result.__dict__)
            elif result.ok:
                typer.echo(f"{result.file}: valid ({result.message})")
            if not result.ok:
                raise OpsError(f"{result.file} is invalid: {result.message}")
        return

    def body(ops: Ops) -> int:
        target = ops.settings.redis
        options: _Options = ctx.obj
        opts = ConfOptions(
            prefix=ops.settings.redis_key_prefix,
            production=production,
            app_user=target.username or "upak",
            # Reuse the app's password when the .env already names an ACL user.
            app_password=target.password if target.username else None,
            ops_user=options.ops_username or "upak-ops",
            ops_password=options.ops_password,
            data_dir=data_dir,
            acl_file=acl_file,
            logfile=logfile,
            tls_dir=tls_dir,
            config_alias=options.config_command if options.config_command != "CONFIG" else None,
            maxmemory=maxmemory,
            port=port,
        )
        generated = generate(opts)
        env_lines = [
            f"REDIS_USERNAME={opts.app_user}",
            f"UPAK_OPS_USERNAME={opts.ops_user}",
            *(f"UPAK_CONFIG_COMMAND={generated.config_alias}" for _ in [0] if production),
        ]
        for user, password in generated.passwords.items():
            name = "REDIS_PASSWORD" if user == opts.app_user else "UPAK_OPS_PASSWORD"
            env_lines.append(f"{name}={password}")
        if out is not None:
            write_config_files(out, generated, env_lines)
            if not as_json:
                typer.echo(f"wrote {out}/redis.conf, {out}/users.acl, {out}/upak-redis.env")
        elif not as_json:
            typer.echo(generated.redis_conf)
            typer.echo(f"# ---- {opts.acl_file} ----")
            typer.echo(generated.acl)
            for line in env_lines:
                typer.echo(f"# .env: {line}", err=True)
        if as_json:
            _emit_json(
                {
                    "redis_conf": generated.redis_conf,
                    "acl": generated.acl,
                    "env": env_lines,
                    "config_command": generated.config_alias,
                }
            )
        return 0

    _run(ctx, "config", as_json, body)


def write_config_files(out: Path, generated: Any, env_lines: list[str]) -> None:
    """redis.conf (0644), users.acl (0640: hashes only) and the env file (0600: secrets)."""
    from upak.ops.diagnose import os_error

    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text, mode in (
            ("redis.conf", generated.redis_conf, 0o644),
            ("users.acl", generated.acl, 0o640),
            ("upak-redis.env", "\n".join(env_lines) + "\n", 0o600),
        ):
            path = out / name
            tmp = out / f".{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, path)
    except OSError as exc:
        raise OpsError(os_error(exc, f"cannot write the config files into {out}")) from None


class _RichProgress(Progress):
    """A transfer bar on stderr, shown only on a terminal (scripts get clean output)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bar: Any = None
        self.task: Any = None

    def start(self, total: int | None, label: str) -> None:
        if not self.enabled or self.bar is not None:
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(label, total=total)

    def advance(self, amount: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, amount)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@redis_app.command()
def backup(
    ctx: typer.Context,
    dest: Annotated[Path, typer.Option("--dest", help="Directory for the backups.")],
    keep: Annotated[
        int | None, typer.Option(min=1, help="Keep the N newest backups, remove older ones.")
    ] = None,
    rdb_path: Annotated[
        Path | None,
        typer.Option(help="The server's dump file, when CONFIG cannot say where it is."),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option("--stream", help="Fetch the snapshot over SYNC (the server is remote)."),
    ] = False,
    wait_running: Annotated[
        bool, typer.Option("--wait-running", help="Wait for a BGSAVE already running.")
    ] = False,
    save_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for BGSAVE / the transfer.")
    ] = 600.0,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            help="After a good backup, write its time and size here for Prometheus "
            "(node_exporter textfile collector, e.g. .../upak_redis_backup.prom)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """BGSAVE, copy the dump to DIR/dump-YYYYmmdd-HHMMSS.rdb, verify, SHA-256, rotate."""
    import time

    from upak.ops.backup import take_backup, write_backup_metrics

    def body(ops: Ops) -> int:
        result = take_backup(
            ops,
            dest,
            keep=keep,
            rdb_path=rdb_path,
            stream=stream,
            wait_running=wait_running,
            progress=_RichProgress(enabled=not as_json),
            timeout=save_timeout,
        )
        if metrics_file is not None:
            write_backup_metrics(metrics_file, result, time.time())
        if as_json:
            _emit_json({"ok": True, **result.as_dict()})
        else:
            typer.echo(
                f"backup {result.path} ({result.size} bytes, verified by {result.verified_by}, "
                f"sha256 {result.sha256[:16]}…) from {result.source} in {result.seconds:.1f}s"
            )
            for old in result.removed:
                typer.echo(f"removed {old}")
        return 0

    _run(ctx, "backup", as_json, body)


@redis_app.command()
def restore(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A backup written by `upak redis backup`.")],
    data_dir: Annotated[Path, typer.Option(help="The stopped server's `dir`.")] = Path(
        "/var/lib/redis"
    ),
    dbfilename: Annotated[str, typer.Option(help="The server's `dbfilename`.")] = "dump.rdb",
    as_json: JsonOption = False,
) -> None:
    """Put a verified backup into a STOPPED local server's data dir (old files kept aside).

    1. sudo systemctl stop redis-server   2. upak redis restore FILE --data-dir /var/lib/redis
    3. sudo systemctl start redis-server  4. upak redis check
    """
    from upak.ops.backup import restore as do_restore

    def body(ops: Ops) -> int:
        result = do_restore(ops, file, data_dir, dbfilename=dbfilename)
        if as_json:
            _emit_json({"ok": True, **result.as_dict()})
        else:
            typer.echo(f"restored {file} -> {result.restored} (verified by {result.verified_by})")
            if result.previous:
                typer.echo(f"the previous dump is kept as {result.previous}")
            if result.aof_moved:
                typer.echo(f"the AOF was moved aside to {result.aof_moved}")
            for step in result.next_steps:
                typer.echo(f"next: {step}")
        return 0

    _run(ctx, "restore", as_json, body)


@redis_app.command()
def monitor(
    ctx: typer.Context,
    app_url: Annotated[
        str | None, typer.Option("--app", help="The service's URL: show its /health store.")
    ] = None,
    interval: Annotated[float, typer.Option(min=0.1, max=60, help="Seconds per refresh.")] = 1.0,
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after N refreshes (default: Ctrl-C).")
    ] = None,
) -> None:
    """A live dashboard: ops/s, memory, hit ratio, clients, evictions, UPAK keys."""
    from upak.ops.monitor import run_monitor

    def body(ops: Ops) -> int:
        return run_monitor(ops, _console(), app_url=app_url, interval=interval, count=count)

    _run(ctx, "monitor", False, body)

"""`upak redis backup` and `upak redis restore`: the seed's BGSAVE + cron copy, done safely.

backup: BGSAVE (BGSAVE SCHEDULE while an AOF rewrite runs), wait until that save finished
and succeeded (rdb_bgsave_in_progress, rdb_saves, rdb_last_bgsave_status), copy the dump
(`CONFIG GET dir` + `dbfilename`, or --rdb-path) — or with --stream fetch it over SYNC — into
`DIR/.dump-….rdb.tmp`, verify it, then rename it to `DIR/dump-YYYYmmdd-HHMMSS.rdb` and write
its SHA-256 beside it (`sha256sum -c` format), and keep the N newest. Whatever fails, no
partial file is left: the temporary file is removed and the final name appears only after
verification; a failure writing the checksum removes the backup too.

With --metrics-file, a successful backup also (re)writes a Prometheus textfile-collector
file (node_exporter's `--collector.textfile.directory`) with its time, size and duration:
the "backup older than a day" alert reads the time, and a failed or missing run leaves it
unchanged, so the alert fires.

restore: verify a backup and put it in a *stopped* server's data dir, keeping what was there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import redis.exceptions as rex

from upak.ops.diagnose import OpsError, os_error
from upak.ops.rdb import CHUNK, RdbError, fetch_over_sync, verify_rdb
from upak.ops.server import Ops, config_get, info, node_clients

NAME_FORMAT = "dump-%Y%m%d-%H%M%S"
BACKUP_TIMESTAMP = "upak_redis_backup_last_success_timestamp_seconds"
POLL_SECONDS = 0.1


class Progress:
    """What the copy reports to (a Rich progress bar in the CLI, nothing in tests)."""

    def start(self, total: int | None, label: str) -> None: ...
    def advance(self, amount: int) -> None: ...
    def stop(self) -> None: ...


@dataclass
class BackupResult:
    path: str
    size: int
    sha256: str
    verified_by: str
    source: str  # "file:<path>" or "sync:<address>"
    seconds: float
    removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- BGSAVE ------------------------------------------------------------------------------


def bgsave_and_wait(
    client: Any,
    *,
    wait_running: bool = False,
    timeout: float = 600.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Start a snapshot and wait until it finished and succeeded; returns INFO persistence."""
    state = info(client, "persistence")
    deadline = clock() + timeout
    if int(state.get("rdb_bgsave_in_progress", 0)):
        if not wait_running:
            raise OpsError(
                "a BGSAVE is already running on the server (for "
                f"{state.get('rdb_current_bgsave_time_sec', '?')}s): wait for it to finish, "
                "or pass --wait-running to wait and then take a fresh one"
            )
        while int(state.get("rdb_bgsave_in_progress", 0)):
            if clock() > deadline:
                raise OpsError(f"the running BGSAVE did not finish within {timeout:.0f}s")
            sleep(POLL_SECONDS)
            state = info(client, "persistence")
    before_saves = state.get("rdb_saves")
    before_time = int(state.get("rdb_last_save_time", 0))
    rewriting = int(state.get("aof_rewrite_in_progress", 0))
    try:
        # During an AOF rewrite a plain BGSAVE is refused; SCHEDULE runs it right after.
        client.execute_command("BGSAVE", *(["SCHEDULE"] if rewriting else []))
    except rex.ResponseError as exc:
        if "already in progress" in str(exc).lower():
            raise OpsError(
                "a BGSAVE is already running on the server: wait for it to finish, or pass "
                "--wait-running"
            ) from None
        raise
    while True:
        sleep(POLL_SECONDS)
        state = info(client, "persistence")
        running = int(state.get("rdb_bgsave_in_progress", 0))
        if before_saves is not None:
            # rdb_saves counts every forked save, successful or not (Redis 7).
            finished = not running and int(state.get("rdb_saves", 0)) > int(before_saves)
        else:
            finished = not running and int(state.get("rdb_last_save_time", 0)) != before_time
        if finished:
            if state.get("rdb_last_bgsave_status") != "ok":
                raise OpsError(
                    "BGSAVE failed on the server (rdb_last_bgsave_status:err): see the Redis "
                    "log; usually its disk is full or its `dir` is not writable"
                )
            return state
        if clock() > deadline:
            raise OpsError(f"BGSAVE did not finish within {timeout:.0f}s; it may still be running")


def dump_path(ops: Ops, client: Any) -> Path:
    """Where the server writes its dump, from CONFIG (under its renamed name, if given)."""
    values = config_get(client, "dir", ops.config_command)
    names = config_get(client, "dbfilename", ops.config_command)
    if values is None or names is None:
        raise OpsError(
            "CONFIG is renamed or denied, so the dump's path is unknown: pass --rdb-path "
            "(e.g. /var/lib/redis/dump.rdb), --config-command NAME, or use --stream"
        )
    return Path(values["dir"]) / names["dbfilename"]


# --- writing the backup --------------------------------------------------------------------


def _check_destination(dest: Path) -> None:
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OpsError(os_error(exc, f"cannot create the destination {dest}")) from None
    if not dest.is_dir():
        raise OpsError(f"the destination {dest} is not a directory")
    if not os.access(dest, os.W_OK | os.X_OK):
        raise OpsError(f"the destination {dest} is not writable by this user")


def _final_name(dest: Path, now: dt.datetime) -> Path:
    base = now.strftime(NAME_FORMAT)
    path = dest / f"{base}.rdb"
    n = 2
    while path.exists():  # two backups in one second
        path = dest / f"{base}-{n}.rdb"
        n += 1
    return path


@contextlib.contextmanager
def _temporary(dest: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A temp file in `dest` that is removed unless the caller renamed it away."""
    tmp = dest / f".dump-{os.getpid()}-{time.monotonic_ns()}.rdb.tmp"
    # 0600: a snapshot holds sessions and replay claims.
    handle = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
    try:
        yield tmp, handle
    finally:
        with contextlib.suppress(OSError):
            handle.close()
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _copy(source: Path, out: BinaryIO, digest: Any, progress: Progress) -> int:
    try:
        handle = source.open("rb")
    except FileNotFoundError:
        raise OpsError(
            f"the dump {source} is not on this machine: run the backup on the Redis host, "
            "pass --rdb-path, or use --stream"
        ) from None
    except OSError as exc:
        raise OpsError(os_error(exc, "cannot read the dump")) from None
    with handle:
        # The server replaces dump.rdb by rename; our open descriptor keeps this snapshot.
        total = os.fstat(handle.fileno()).st_size
        progress.start(total, f"copying {source.name}")
        size = 0
        while chunk := handle.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            progress.advance(len(chunk))
    return size


def take_backup(
    ops: Ops,
    dest: Path,
    *,
    keep: int | None = None,
    rdb_path: Path | None = None,
    stream: bool = False,
    wait_running: bool = False,
    verify_with_tool: bool = True,
    progress: Progress | None = None,
    timeout: float = 600.0,
    now: Callable[[], dt.datetime] = dt.datetime.now,
) -> BackupResult:
    progress = progress or Progress()
    started = time.monotonic()
    _check_destination(dest)
    digest = hashlib.sha256()
    with ops.connected() as client:
        node = node_clients(client)
        if len(node) > 1:
            raise OpsError(
                "this is a Redis Cluster: back up each primary on its own "
                "(REDIS_URL=redis://<node>:<port>)"
            )
        node_client = node[0][1]
        try:
            with _temporary(dest) as (tmp, out):
                if stream:
                    master = _master_address(node_client)
                    source = f"sync:{ops.ops_settings().redis.address}"

                    def on_size(total: int | None) -> None:
                        progress.start(total, "receiving the snapshot over SYNC")

                    def on_chunk(chunk: bytes) -> None:
                        digest.update(chunk)
                        progress.advance(len(chunk))

                    size = fetch_over_sync(
                        ops.ops_settings(),
                        out,
                        master=master,
                        timeout=timeout,
                        on_size=on_size,
                        on_chunk=on_chunk,
                    )
                else:
                    path = rdb_path or dump_path(ops, node_client)
                    bgsave_and_wait(node_client, wait_running=wait_running, timeout=timeout)
                    source = f"file:{path}"
                    size = _copy(path, out, digest, progress)
                progress.stop()
                out.flush()
                os.fsync(out.fileno())
                out.close()
                verified = verify_rdb(tmp, use_tool=verify_with_tool)
                final = _final_name(dest, now())
                os.replace(tmp, final)
            sha = digest.hexdigest()
            _write_checksum(final, sha)
            _fsync_dir(dest)
        except RdbError as exc:
            raise OpsError(f"the snapshot failed verification, nothing was kept: {exc}") from None
        except (rex.RedisError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
            raise OpsError(ops.explain(exc)) from None
        except OSError as exc:
            raise OpsError(os_error(exc, f"cannot write the backup into {dest}")) from None
        finally:
            progress.stop()
    removed = prune(dest, keep) if keep else []
    return BackupResult(
        path=str(final),
        size=size,
        sha256=sha,
        verified_by=verified.by,
        source=source,
        seconds=round(time.monotonic() - started, 3),
        removed=removed,
    )


def _master_address(client: Any) -> tuple[str, int] | None:
    pool = client.connection_pool
    if hasattr(pool, "get_master_address"):
        host, port = pool.get_master_address()
        return str(host), int(port)
    return None


def _write_checksum(final: Path, sha: str) -> None:
    """`<sha256>  <name>` beside the backup; if it cannot be written, the backup goes too."""
    target = final.with_name(final.name + ".sha256")
    tmp = final.with_name(f".{final.name}.sha256.tmp")
    try:
        with tmp.open("w") as handle:
            handle.write(f"{sha}  {final.name}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise


def _age_key(path: Path) -> tuple[str, int]:
    """dump-YYYYmmdd-HHMMSS[-N].rdb -> (stamp, N): the second backup of a second sorts later."""
    parts = path.stem.split("-")  # ["dump", date, time] or ["dump", date, time, N]
    stamp = "-".join(parts[1:3])
    return stamp, int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 1


def prune(dest: Path, keep: int) -> list[str]:
    """Keep the `keep` newest dump-*.rdb (by name: the timestamp sorts), remove the rest."""
    backups = sorted(dest.glob("dump-*.rdb"), key=_age_key, reverse=True)
    removed = []
    for old in backups[keep:]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        removed.append(str(old))
    return removed


# --- restore -------------------------------------------------------------------------------


@dataclass
class RestoreResult:
    restored: str
    previous: str | None
    aof_moved: str | None
    verified_by: str
    next_steps: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sidecar_matches(backup: Path) -> bool | None:
    sidecar = backup.with_name(backup.name + ".sha256")
    if not sidecar.exists():
        return None
    expected = sidecar.read_text().split()[0]
    digest = hashlib.sha256()
    with backup.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == expected


def _server_answers(ops: Ops) -> bool:
    """Is something listening where the settings say Redis is? (It must be stopped.)"""
    target = ops.settings.redis
    if target.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = str(target.path)
    elif target.kind == "standalone":
        host, port = target.hosts[0]
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        address = (host, port)
    else:
        raise OpsError("restore works on a standalone server: point REDIS_URL at it")
    sock.settimeout(1.0)
    try:
        sock.connect(address)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def restore(
    ops: Ops,
    backup: Path,
    data_dir: Path,
    *,
    dbfilename: str = "dump.rdb",
    verify_with_tool: bool = True,
    now: Callable[[], dt.datetime] = dt.datetime.now,
) -> RestoreResult:
    if not backup.is_file():
        raise OpsError(f"no such backup file: {backup}")
    if not data_dir.is_dir():
        raise OpsError(f"the data dir {data_dir} does not exist (Redis's `dir` setting)")
    if _server_answers(ops):
        raise OpsError(
            f"Redis is running at {ops.settings.redis.address}: stop it first "
            "(sudo systemctl stop redis-server); a running server would overwrite the "
            "restored dump when it next saves or shuts down"
        )
    if _sidecar_matches(backup) is False:
        raise OpsError(f"{backup} does not match its .sha256 file: it changed since the backup")
    try:
        verified = verify_rdb(backup, use_tool=verify_with_tool)
    except RdbError as exc:
        raise OpsError(f"{backup} is not a usable snapshot: {exc}") from None
    stamp = now().strftime("%Y%m%d-%H%M%S")
    target = data_dir / dbfilename
    previous = aof_moved = None
    try:
        # Redis prefers the AOF to the dump at start-up: move it aside, or the restore is moot.
        for aof in (data_dir / "appendonlydir", data_dir / "appendonly.aof"):
            if aof.exists():
                aof_moved = str(aof.with_name(f"{aof.name}.before-restore-{stamp}"))
                os.replace(aof, aof_moved)
        if target.exists():
            previous = str(target.with_name(f"{target.name}.before-restore-{stamp}"))
            os.replace(target, previous)
        tmp = data_dir / f".{dbfilename}.restore-tmp"
        try:
            shutil.copyfile(backup, tmp)
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
            owner = data_dir.stat()
            if os.geteuid() == 0:  # keep the file readable by the redis user
                os.chown(tmp, owner.st_uid, owner.st_gid)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(data_dir)
    except OSError as exc:
        raise OpsError(os_error(exc, f"cannot restore into {data_dir}")) from None
    steps = [
        "start Redis: sudo systemctl start redis-server",
        "check it: upak redis check && upak redis info keyspace",
    ]
    if aof_moved:
        steps.insert(
            1,
            "with appendonly yes, Redis 7 loads the dump and writes a fresh AOF from it",
        )
    return RestoreResult(str(target), previous, aof_moved, verified.by, steps)


def write_backup_metrics(path: Path, result: BackupResult, finished: float) -> None:
    """The textfile-collector file for a successful backup, replaced atomically."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    for name, help_text, value in (
        (BACKUP_TIMESTAMP, "Unix time the last verified backup finished", finished),
        ("upak_redis_backup_last_size_bytes", "Size of the last verified backup", result.size),
        ("upak_redis_backup_last_duration_seconds", "Time the last backup took", result.seconds),
    ):
        Gauge(name, help_text, registry=registry).set(value)
    try:
        write_to_textfile(str(path), registry)  # a temporary file renamed into place
    except OSError as exc:
        raise OpsError(
            os_error(exc, f"the backup {result.path} is written, but not the metrics file {path}")
        ) from None

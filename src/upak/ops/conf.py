"""`upak redis config`: the seed's redis.conf, corrected where the audit knows better, plus an
ACL file with a least-privilege app user and an ops user; `--check FILE` validates a config by
starting a throwaway redis-server on it (Redis 7 has no `--test-config`).

Corrections to the seed, each explained in a comment of the generated file:
- `maxmemory-policy noeviction` instead of `allkeys-lru` (evicting replay claims or sessions
  is a security failure; every UPAK key has a TTL, so volatile-* policies are no better);
- an ACL file (`user default off`, an app user limited to REDIS_KEY_PREFIX and the commands
  the service runs, `APP_COMMANDS`, an ops user for INFO, backups and the audit) instead of
  one shared `requirepass` with `~* +@all`;
- `bind 127.0.0.1 -::1`, `protected-mode yes`, `enable-debug-command no` stated explicitly;
- with `--production`: TLS only (`port 0`, `tls-port 6380`), AOF, and the seed's
  rename-command lines, CONFIG renamed to a secret name rather than removed so that the ops
  user (and `upak redis backup` / `audit` with `--config-command`) can still read settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from upak.ops.diagnose import OpsError

# The commands the service runs as its app user: one list, read by the generated ACL (below)
# and by `upak redis audit`, which fails an app user that may run anything else. `name` allows
# every subcommand, `name|sub` one; every name must exist on Redis 6.2 (an ACL file naming an
# unknown command does not load). Scripts run with the caller's ACL, so the commands inside
# them are here too; a feature whose script calls a new command adds it here
# (tests/ops/test_audit.py fails on a script command missing from it).
APP_COMMANDS: tuple[str, ...] = (
    # connection set-up and the heartbeat (upak.store.wire; redis-py for Cluster)
    "auth",
    "select",
    "ping",
    "client|setname",  # not CLIENT SETINFO: Redis < 7.2 refuses an ACL naming it; redis-py
    # ignores its refusal
    # every state operation is a script (upak.store.operation): EVALSHA, EVAL on NOSCRIPT,
    # SCRIPT LOAD on Cluster nodes
    "evalsha",
    "eval",
    "script|load",
    # inside the scripts (features/*.py, store/primitives.py), and `upak redis check`
    "get",
    "set",
    "del",
    "exists",
    "pexpire",
    "pttl",
    "hget",
    "hmget",
    "hset",
    "lindex",
    "llen",
    "lpush",
    "rpop",
    "zadd",
    "zcard",
    "zrange",
    "zrem",
    "time",
    # durable writes: a WAIT for the replicas behind them (REDIS_WAIT_REPLICAS); ROLE, which
    # would tell a lagging replica from a missing one, is @admin and stays refused
    "wait",
    # Redis Cluster: redis-py reads the slot map and the command table, follows ASK
    "cluster|slots",  # what redis-py reads (CLUSTER SHARDS is 7.0+, so not named)
    "command",
    "asking",
)
APP_RULES = "-@all " + " ".join(f"+{command}" for command in APP_COMMANDS)

OPS_COMMANDS = (
    # INFO and SCAN for info/monitor; BGSAVE, LASTSAVE and CONFIG GET dir/dbfilename for
    # backups (ACL rules name commands by their original names, even when renamed);
    # SYNC/PSYNC/REPLCONF for `backup --stream`; ACL LIST/GETUSER/DRYRUN and COMMAND INFO for
    # audit (DRYRUN asks what the app user may run without running it).
    "+info +scan +dbsize +bgsave +lastsave +config|get +sync +psync +replconf "
    "+acl|list +acl|getuser +acl|dryrun +acl|whoami +command|info +slowlog|get "
    "+latency|latest +time"
)


@dataclass
class Generated:
    redis_conf: str
    acl: str
    passwords: dict[str, str] = field(default_factory=dict, repr=False)  # generated only
    config_alias: str = "CONFIG"


@dataclass
class ConfOptions:
    prefix: str = "upak:"
    production: bool = False
    app_user: str = "upak"
    app_password: str | None = field(default=None, repr=False)
    ops_user: str = "upak-ops"
    ops_password: str | None = field(default=None, repr=False)
    data_dir: str = "/var/lib/redis"
    acl_file: str = "/etc/redis/users.acl"
    logfile: str = "/var/log/redis/redis-server.log"
    tls_dir: str = "/etc/redis/tls"
    config_alias: str | None = None
    maxmemory: str = "256mb"
    port: int | None = None  # None: 6379, or the TLS port 6380 with `production`


def _sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def generate(opts: ConfOptions) -> Generated:
    passwords: dict[str, str] = {}
    app_password = opts.app_password
    if not app_password:
        app_password = passwords[opts.app_user] = secrets.token_urlsafe(32)
    ops_password = opts.ops_password
    if not ops_password:
        ops_password = passwords[opts.ops_user] = secrets.token_urlsafe(32)
    alias = "CONFIG"
    if opts.production:
        alias = opts.config_alias or f"CONFIG_{secrets.token_hex(8).upper()}"
    return Generated(
        redis_conf=_redis_conf(opts, alias),
        acl=_acl(opts, app_password, ops_password),
        passwords=passwords,
        config_alias=alias,
    )


def _redis_conf(opts: ConfOptions, alias: str) -> str:
    lines = [
        "# redis.conf for UPAK Backend, written by `upak redis config"
        + (" --production`" if opts.production else "`"),
        "# The seed's settings (redis-setup.md), corrected where `upak redis audit` knows better.",
        "",
        "# Network: loopback only (the seed); protected-mode as a second line of defence.",
        "bind 127.0.0.1 -::1",
        "protected-mode yes",
    ]
    if opts.production:
        lines += [
            "# TLS only (the seed's production TLS section): the plain port is closed.",
            "port 0",
            f"tls-port {opts.port or 6380}",
            f"tls-cert-file {opts.tls_dir}/redis.crt",
            f"tls-key-file {opts.tls_dir}/redis.key",
            f"tls-ca-cert-file {opts.tls_dir}/ca.crt",
            "# Clients authenticate with ACL passwords; client certificates are optional.",
            "tls-auth-clients optional",
        ]
    else:
        lines.append(f"port {opts.port or 6379}")
    lines += [
        "tcp-backlog 511",
        "timeout 0",
        "tcp-keepalive 300",
        "databases 16",
        "",
        "loglevel notice",
        f"logfile {opts.logfile or chr(34) * 2}",
        "",
        "# Persistence (the seed's save points): a restart must not forget replay claims",
        "# or sessions. `upak redis backup` copies the dump this writes.",
        f"dir {opts.data_dir}",
        "dbfilename dump.rdb",
        "save 900 1",
        "save 300 10",
        "save 60 10000",
        "stop-writes-on-bgsave-error yes",
        "rdbcompression yes",
        "rdbchecksum yes",
    ]
    if opts.production:
        lines += [
            "# AOF: at most one second of writes lost on a crash, not up to 15 minutes.",
            "appendonly yes",
            "appendfsync everysec",
        ]
    lines += [
        "",
        f"maxmemory {opts.maxmemory}",
        "# Corrected: the seed has allkeys-lru. Any allkeys-* or volatile-* policy can evict",
        "# replay claims (a replayed webhook gets through) and sessions or revocations (all",
        "# UPAK keys have TTLs, so volatile-* is no safer). When full, noeviction makes writes",
        "# fail loudly; run the cache on a separate Redis with allkeys-lru if it needs eviction.",
        "maxmemory-policy noeviction",
        "",
        "# Users live in the ACL file (replaces the seed's single requirepass with ~* +@all):",
        "# the default user is off; the app user may touch only REDIS_KEY_PREFIX keys, with the",
        "# commands the service runs (nothing @dangerous or @admin); the ops user reads INFO,",
        "# takes backups (BGSAVE, SYNC), reads CONFIG and the ACLs for the audit, nothing else.",
        f"aclfile {opts.acl_file}",
        "enable-debug-command no",
        "enable-module-command no",
    ]
    if opts.production:
        lines += [
            "",
            "# The seed's production section. The ACL already denies these to the app user;",
            "# renaming removes them for everyone else too. CONFIG gets a secret name instead",
            f'# of "": pass it as `upak redis … --config-command {alias}` (UPAK_CONFIG_COMMAND).',
            'rename-command FLUSHDB ""',
            'rename-command FLUSHALL ""',
            'rename-command DEBUG ""',
            f"rename-command CONFIG {alias}",
        ]
    return "\n".join(lines) + "\n"


def _acl(opts: ConfOptions, app_password: str, ops_password: str) -> str:
    """ACL file text. The format has no comments: the explanations live in redis.conf.
    Passwords are stored as SHA-256 (#…); the plain ones go in the service's .env."""
    prefix = opts.prefix
    return (
        "user default off\n"
        f"user {opts.app_user} on #{_sha256(app_password)} resetkeys ~{prefix}* "
        f"resetchannels {APP_RULES}\n"
        f"user {opts.ops_user} on #{_sha256(ops_password)} resetkeys %R~{prefix}* "
        f"resetchannels -@all +@connection -@dangerous {OPS_COMMANDS}\n"
    )


# --- validating a config file ------------------------------------------------------------


@dataclass
class ConfigCheck:
    file: str
    ok: bool
    message: str
    version: str = ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _error_of(output: str) -> str:
    """The useful part of redis-server's complaint, as one line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if "*** FATAL CONFIG FILE ERROR" in output:
        start = next(i for i, line in enumerate(lines) if "FATAL CONFIG FILE ERROR" in line)
        return " ".join(lines[start + 1 : start + 4])
    for line in reversed(lines):
        text = re.sub(r"^\d+:[A-Z] [^*#]*[*#] ", "", line)
        if any(word in text.lower() for word in ("error", "fatal", "can't", "failed", "abort")):
            return text
    return lines[-1] if lines else "redis-server exited without a message"


def check_config_file(
    path: Path, redis_server: str | None = None, timeout: float = 10.0
) -> ConfigCheck:
    """Start redis-server on `path` on free local ports, in a scratch dir, then stop it."""
    server = redis_server or shutil.which("redis-server")
    if server is None:
        raise OpsError("redis-server is not installed here: install it to validate configs")
    if not path.is_file():
        raise OpsError(f"no such config file: {path}")
    text = path.read_text(errors="replace")
    scratch = Path(tempfile.mkdtemp(prefix="upak-config-check-"))
    # Redis chdirs into `dir` while parsing, so a data dir that exists only on the real host
    # would fail the check here: validate a copy whose `dir` is the scratch dir instead.
    notes = []
    for match in re.finditer(r"^\s*dir\s+(\S+)", text, re.MULTILINE):
        if not Path(match.group(1).strip("\"'")).is_dir():
            notes.append(f"dir {match.group(1)} does not exist on this machine")
    copy = scratch / "redis.conf"
    copy.write_text(re.sub(r"^\s*dir\s+.*$", f"dir {scratch}", text, flags=re.MULTILINE))
    port = _free_port()
    # Later arguments win over the file: the throwaway server binds loopback on free ports,
    # writes into the scratch dir, logs to our pipe, and never daemonizes.
    args = [
        server,
        str(copy),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--daemonize",
        "no",
        "--supervised",
        "no",
        "--logfile",
        "",
        "--dir",
        str(scratch),
        "--pidfile",
        str(scratch / "redis.pid"),
        "--unixsocket",
        str(scratch / "redis.sock"),
    ]
    tls = re.search(r"^\s*tls-port\s+([1-9]\d*)", text, re.MULTILINE)
    if tls:
        args += ["--tls-port", str(_free_port())]
    proc = subprocess.Popen(
        args,
        cwd=path.resolve().parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                return ConfigCheck(str(path), False, _error_of(output))
            if _listening(port):
                version = _version(server)
                message = f"redis-server {version} started on it and was stopped"
                if notes:
                    message += "; note: " + "; ".join(notes)
                return ConfigCheck(str(path), True, message, version)
            time.sleep(0.05)
        return ConfigCheck(str(path), False, f"redis-server did not start within {timeout:.0f}s")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _version(server: str) -> str:
    out = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else "?"

"""`upak redis audit`: the seed's security and production settings, checked on the live server.

Every check ends pass / warn / fail / unknown with the reason and the fix. Facts come from
three places: CONFIG GET (when the inspecting user may run it, under its renamed name if
`--config-command` says so), INFO (always readable by the ops user), and harmless probes run
with the *app's* credentials, because what matters is what the service's user can do:

- a fresh connection without credentials (does it get NOAUTH?);
- FLUSHALL/FLUSHDB/DEBUG/CONFIG in forms that cannot change anything (`FLUSHALL <junk>` is a
  syntax error when allowed, NOPERM when an ACL denies it, "unknown command" when renamed);
- GET on a key outside REDIS_KEY_PREFIX (NOPERM when the user's key pattern is the prefix).

What the app user may run is read from the server, not guessed from four probes: ACL DRYRUN
(Redis 7) asks, for every command and subcommand in the server's command table, whether the
app user could run it, without running it. The app user passes only if nothing @admin or
@dangerous is allowed and nothing outside `upak.ops.conf.APP_COMMANDS`, the one list of
commands the service runs (the generated ACL is built from it). Without DRYRUN (Redis 6, or an
inspecting user that may not run it) the check is unknown unless a probe proves a failure.
ACL LIST shows every other user: an enabled one with `+@all` or `~*` that is not the ops user
fails `privileged-users`.

When CONFIG is unavailable, what INFO cannot show is reported as unknown, never as passed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.retry import Retry
from rich.console import Console
from rich.table import Table

from upak.ops.conf import APP_COMMANDS
from upak.ops.diagnose import OpsError, close_quietly, explain, is_disabled
from upak.ops.server import Ops, config_get, info, node_clients, plain_connection_kwargs

Status = Literal["pass", "warn", "fail", "unknown"]
DANGEROUS = ("FLUSHALL", "FLUSHDB", "DEBUG", "CONFIG")
# Forms of each command that change nothing whatever the answer (checked on Redis 6 and 7).
_PROBES: dict[str, tuple[str, ...]] = {
    "FLUSHALL": ("FLUSHALL", "upak-audit-probe"),  # allowed -> "syntax error"
    "FLUSHDB": ("FLUSHDB", "upak-audit-probe"),
    "DEBUG": ("DEBUG", "upak-audit-probe"),  # allowed -> "unknown subcommand"
    "CONFIG": ("CONFIG", "GET", "upak-audit-probe"),  # allowed -> empty reply
}
_EVICTING = (
    "allkeys-* and volatile-* policies can both evict UPAK's keys (every one of them has a "
    "TTL): an evicted replay claim lets a replayed webhook through, an evicted session or "
    "revocation logs a user out or brings a revoked session back"
)


@dataclass
class Finding:
    id: str
    title: str
    status: Status
    reason: str
    fix: str = ""


@dataclass
class Facts:
    """Everything the checks read, gathered once."""

    info: dict[str, Any] = field(default_factory=dict)
    config: dict[str, str] | None = None
    acl: dict[str, str] | None = None  # user name -> its ACL LIST rule line
    app_user: str = "default"
    unauthenticated: str = "unknown"  # "noauth" | "open" | a diagnosis
    commands: dict[str, str] = field(default_factory=dict)  # name -> allowed|acl|renamed|...
    keys_outside_prefix: str = "unknown"  # "allowed" | "denied" | a reason
    connection_tls: bool = False
    config_command: str = "CONFIG"
    ops_user: str | None = None  # the inspecting user, when it is not the app's
    # ACL DRYRUN over the command table: command (`name` or `name|sub`) -> its ACL categories,
    # for every command the app user may run; None when DRYRUN could not be asked.
    app_allowed: dict[str, frozenset[str]] | None = None
    app_allowed_reason: str = ""  # why app_allowed is None


@dataclass
class AuditReport:
    target: str
    findings: list[Finding]
    config_available: bool

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("pass", "warn", "fail", "unknown"), 0)
        for finding in self.findings:
            out[finding.status] += 1
        return out

    def ok(self, allow_warnings: bool = False) -> bool:
        accepted = {"pass", "warn"} if allow_warnings else {"pass"}
        return all(f.status in accepted for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "config_available": self.config_available,
            "counts": self.counts(),
            "findings": [asdict(f) for f in self.findings],
        }


# --- gathering -------------------------------------------------------------------------


def gather(ops: Ops) -> Facts:
    facts = Facts(
        app_user=ops.settings.redis.username or "default",
        connection_tls=ops.settings.redis.tls,
        config_command=ops.config_command,
        ops_user=(ops.ops_username or ops.settings.redis.username or "default")
        if ops.ops_username or ops.ops_password
        else None,
    )
    with ops.connected(ops=False) as app:
        inspect = ops.ops_client() if ops.ops_username or ops.ops_password else app
        try:
            node = node_clients(inspect)[0][1]
            try:
                facts.info = info(node, "everything")
            except rex.ResponseError as exc:
                if not is_disabled(exc):
                    raise
            facts.config = config_get(node, "*", ops.config_command)
            facts.acl = _acl_list(node)
            facts.app_allowed, facts.app_allowed_reason = _allowed_commands(
                node, facts.app_user, ops.settings.redis_key_prefix
            )
            facts.unauthenticated = _unauthenticated(ops, node)
            facts.commands = {name: _probe(app, name) for name in DANGEROUS}
            if ops.config_command.upper() != "CONFIG":
                renamed = _probe(app, "CONFIG", ops.config_command)
                if renamed == "allowed":
                    facts.commands["CONFIG"] = f"allowed as {ops.config_command}"
            facts.keys_outside_prefix = _probe_outside_key(app, ops.settings.redis_key_prefix)
        except (rex.RedisError, OSError) as exc:
            raise OpsError(explain(exc, ops.ops_settings())) from None
        finally:
            if inspect is not app:
                close_quietly(inspect)
    return facts


def _acl_list(node: Any) -> dict[str, str] | None:
    try:
        lines = node.execute_command("ACL", "LIST")
    except rex.ResponseError:
        return None  # denied (or pre-6 Redis): the checks infer from the probes instead
    users = {}
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else str(raw)
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "user":
            users[parts[1]] = line
    return users


def _allowed_commands(
    node: Any, user: str, prefix: str
) -> tuple[dict[str, frozenset[str]] | None, str]:
    """Every command and subcommand `user` may run, with its ACL categories (ACL DRYRUN)."""
    try:
        # One argument: redis-py parses a plain COMMAND reply into a dict we do not want.
        table = node.execute_command("COMMAND INFO")
    except rex.ResponseError as exc:
        return None, f"COMMAND INFO is denied to the inspecting user ({exc})"
    entries: list[tuple[str, list[str], frozenset[str]]] = []
    for command in table or ():
        if not command or "no_auth" in {_text(f) for f in command[2]}:
            continue  # AUTH, HELLO, QUIT, RESET: every connection may run them, ACL or not
        name = _text(command[0]).lower()
        entries.append(
            (name, _dry_run_args(name.split("|"), int(command[1]), prefix), _cats(command))
        )
        for sub in command[9] if len(command) > 9 and command[9] else ():
            sub_name = _text(sub[0]).lower()  # "client|list"
            entries.append(
                (sub_name, _dry_run_args(sub_name.split("|"), int(sub[1]), prefix), _cats(sub))
            )
    pipe = node.pipeline(transaction=False)
    for _, args, _ in entries:
        pipe.execute_command("ACL", "DRYRUN", user, *args)
    try:
        replies = pipe.execute(raise_on_error=False)
    except rex.ResponseError as exc:
        return None, f"ACL DRYRUN could not be asked ({exc})"
    allowed: dict[str, frozenset[str]] = {}
    for (name, _, categories), reply in zip(entries, replies, strict=True):
        if isinstance(reply, Exception):
            text = str(reply).lower()
            if "unknown subcommand" in text or "unknown command" in text:
                return None, "ACL DRYRUN needs Redis 7 (and +acl|dryrun for the ops user)"
            if "no permissions" in text or "noperm" in text:
                return None, "ACL DRYRUN is denied to the inspecting user (+acl|dryrun)"
            continue  # e.g. an arity this table describes differently: not decided here
        answer = _text(reply)
        # OK, or a denial of a key or channel: the command itself is allowed.
        if answer == "OK" or "to run the" not in answer:
            allowed[name] = categories
    return allowed, ""


def _cats(command: Any) -> frozenset[str]:
    return frozenset(_text(c).lstrip("@").lower() for c in (command[6] if len(command) > 6 else ()))


def _dry_run_args(name: list[str], arity: int, prefix: str) -> list[str]:
    """The command's name and enough placeholder arguments for its arity; the placeholders
    are keys under the prefix, so a key-pattern denial cannot hide the command's answer."""
    wanted = max(abs(arity), len(name))
    return [*name, *[f"{prefix}upak-audit-probe"] * (wanted - len(name))]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unauthenticated(ops: Ops, node: Any) -> str:
    """Open a new connection with no credentials at all and PING."""
    kwargs = plain_connection_kwargs(ops.settings)
    location = node.connection_pool.connection_kwargs
    for name in ("host", "port", "path"):
        if name in location:
            kwargs["unix_socket_path" if name == "path" else name] = location[name]
    if "host" not in location and "path" not in location:  # a Sentinel-managed master
        kwargs["host"], kwargs["port"] = node.connection_pool.get_master_address()
    # RESP2: a plain PING, no HELLO; no retries (a NOAUTH answer is the expected result).
    client = redis.Redis(protocol=2, retry=Retry(NoBackoff(), 0), **kwargs)
    try:
        client.ping()
        return "open"
    except rex.AuthenticationError:
        return "noauth"
    except rex.ResponseError as exc:
        return "noauth" if "noauth" in str(exc).lower() else f"unexpected answer: {exc}"
    except (rex.RedisError, OSError) as exc:
        return f"could not connect without credentials: {exc}"
    finally:
        close_quietly(client)


def _probe(app: Any, name: str, alias: str | None = None) -> str:
    """How `name` stands for the app's user: allowed | acl | renamed | protected."""
    args = _PROBES[name]
    if alias:
        args = (alias, *args[1:])
    try:
        app.execute_command(*args)
    except rex.NoPermissionError:
        return "acl"
    except rex.ResponseError as exc:
        text = str(exc).lower()
        if "no permissions" in text:
            return "acl"
        if "unknown command" in text:
            return "renamed"
        if "not allowed" in text:
            return "protected"
        return "allowed"  # a syntax error or unknown subcommand: the command itself ran
    return "allowed"


def _probe_outside_key(app: Any, prefix: str) -> str:
    key = "__upak_audit_probe__"
    if key.startswith(prefix):
        key = "~upak-audit-probe~"
    try:
        app.get(key)  # GET: a command the app user has (APP_COMMANDS), harmless on any key
    except rex.ResponseError as exc:
        text = str(exc).lower()
        if "no permissions" in text and "key" in text:
            return "denied"
        return f"error: {exc}"
    return "allowed"


# --- the checks ------------------------------------------------------------------------


def run_audit(ops: Ops) -> AuditReport:
    facts = gather(ops)
    findings = [check(facts) for check in CHECKS]
    return AuditReport(
        target=ops.settings.redis.redacted_url(),
        findings=findings,
        config_available=facts.config is not None,
    )


def _no_config(facts: Facts, what: str) -> str:
    return (
        f"unknown: {what} can only be read with CONFIG, which is renamed or denied for this "
        "user; pass --config-command NAME and an ops user (--ops-user) to check it"
    )


def check_auth_required(facts: Facts) -> Finding:
    title = "Authentication required"
    if facts.unauthenticated == "noauth":
        return Finding(
            "auth-required", title, "pass", "a new connection without credentials gets NOAUTH"
        )
    if facts.unauthenticated == "open":
        return Finding(
            "auth-required",
            title,
            "fail",
            "a new connection without credentials runs commands (PING answered PONG): "
            "anyone who reaches the port owns the data",
            "set `requirepass`, or better `user default off` plus ACL users "
            "(`upak redis config` writes both)",
        )
    return Finding("auth-required", title, "unknown", facts.unauthenticated)


def check_default_user(facts: Facts) -> Finding:
    title = "Default user is not `on nopass`"
    fix = "give the default user a password (requirepass) or turn it off (`user default off`)"
    line = (facts.acl or {}).get("default")
    if line is not None:
        rules = line.split()[2:]
        if "off" in rules:
            return Finding("default-user", title, "pass", "the default user is off")
        if "nopass" in rules:
            return Finding(
                "default-user",
                title,
                "fail",
                "the default user is `on nopass`: every connection is it",
                fix,
            )
        return Finding("default-user", title, "pass", "the default user needs a password")
    if facts.unauthenticated == "noauth":
        return Finding(
            "default-user",
            title,
            "pass",
            "inferred: a connection without credentials is refused, so the default "
            "user is off or has a password (ACL LIST is denied to this user)",
        )
    if facts.unauthenticated == "open":
        return Finding(
            "default-user",
            title,
            "fail",
            "inferred: a connection without credentials is served as the default "
            "user, so it is `on nopass`",
            fix,
        )
    return Finding("default-user", title, "unknown", "ACL LIST is denied and the probe failed")


def check_app_user(facts: Facts) -> Finding:
    title = f"App user {facts.app_user!r} is least-privilege"
    problems = []
    if facts.app_user == "default":
        problems.append("the app connects as the default user (set REDIS_USERNAME)")
    if facts.keys_outside_prefix == "allowed":
        problems.append(
            "it can read keys outside REDIS_KEY_PREFIX (its key pattern is not the prefix)"
        )
    probed = [n for n, state in facts.commands.items() if state.startswith("allowed")]
    if probed:
        problems.append(f"it can run {', '.join(probed)}")
    rules = (facts.acl or {}).get(facts.app_user, "").split()
    if "+@all" in rules or "allcommands" in rules:
        problems.append("its ACL grants +@all")
    if facts.app_allowed is not None:
        risky = sorted(n for n, cats in facts.app_allowed.items() if cats & {"admin", "dangerous"})
        if risky:
            # Every one named: each is a way to take the server over.
            problems.append(f"it may run @admin/@dangerous commands: {_some(risky, len(risky))}")
        outside = sorted(n for n in facts.app_allowed if not _needed(n) and n not in risky)
        if outside:
            problems.append(f"it may run commands the service never uses: {_some(outside)}")
    fix = (
        "give the app user exactly the service's commands on the prefix: `upak redis config` "
        "writes it (~<prefix>* -@all +evalsha +eval … from upak.ops.conf.APP_COMMANDS)"
    )
    if problems:
        return Finding("app-user", title, "fail", "; ".join(problems), fix)
    if facts.app_allowed is None:
        return Finding(
            "app-user",
            title,
            "unknown",
            "what the app user may run could not be read: "
            f"{facts.app_allowed_reason or 'no ACL access'}; pass an ops user (--ops-user) "
            "with +acl|dryrun and +command|info, on Redis 7",
            fix,
        )
    if facts.keys_outside_prefix != "denied":
        return Finding(
            "app-user",
            title,
            "unknown",
            f"the key-pattern probe gave no answer ({facts.keys_outside_prefix})",
            fix,
        )
    return Finding(
        "app-user",
        title,
        "pass",
        f"keys outside the prefix are denied; ACL DRYRUN allows {len(facts.app_allowed)} "
        "commands, all of them the service's own, none @admin or @dangerous",
    )


def _needed(command: str) -> bool:
    return command in APP_COMMANDS or command.split("|", 1)[0] in APP_COMMANDS


def _some(names: list[str], shown: int = 8) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(n.upper().replace("|", " ") for n in names[:shown]) + more


def check_privileged_users(facts: Facts) -> Finding:
    title = "No other user with +@all or ~*"
    if facts.acl is None:
        return Finding(
            "privileged-users",
            title,
            "unknown",
            "ACL LIST is denied to the inspecting user: pass an ops user (--ops-user)",
        )
    flagged = []
    for user, line in facts.acl.items():
        rules = line.split()[2:]
        if user == facts.ops_user or "on" not in rules:
            continue
        broad = [r for r in rules if r in ("+@all", "allcommands", "~*", "allkeys")]
        if broad:
            flagged.append(f"{user} ({' '.join(broad)})")
    if flagged:
        return Finding(
            "privileged-users",
            title,
            "fail",
            f"enabled users that can do anything: {', '.join(flagged)}; whoever holds their "
            "password owns every key and the server",
            "turn them off (`ACL SETUSER name off`) or limit them; the operator's own user "
            "is the ops user (UPAK_OPS_USERNAME), checked separately",
        )
    others = [u for u in facts.acl if u not in (facts.ops_user, facts.app_user)]
    return Finding(
        "privileged-users",
        title,
        "pass",
        f"{len(others)} other user(s), none enabled with +@all or ~*"
        + (f" (the ops user {facts.ops_user!r} is not counted)" if facts.ops_user else ""),
    )


def check_dangerous_commands(facts: Facts) -> Finding:
    title = "FLUSHALL, FLUSHDB, DEBUG, CONFIG disabled for the app"
    how = {
        "acl": "denied by ACL",
        "renamed": "renamed away",
        "protected": "disabled by enable-debug-command",
    }
    allowed = [n for n, s in facts.commands.items() if s.startswith("allowed")]
    detail = ", ".join(f"{n}: {how.get(s, s)}" for n, s in facts.commands.items())
    if allowed:
        return Finding(
            "dangerous-commands",
            title,
            "fail",
            detail,
            "deny them in the app's ACL user (-@dangerous; ACL supersedes rename-command), "
            'or rename-command them to "" as the seed does',
        )
    return Finding("dangerous-commands", title, "pass", detail)


_WILDCARDS = {"*", "-*", "0.0.0.0", "::", "-::", "::*", "-::*", "-0.0.0.0"}


def _bind_addresses(facts: Facts) -> list[str] | None:
    if facts.config is None or "bind" not in facts.config:
        return None
    return facts.config["bind"].split()


def _loopback_only(addresses: list[str]) -> bool:
    for address in addresses:
        plain = address.lstrip("-")
        if plain == "localhost":
            continue
        try:
            if not ipaddress.ip_address(plain).is_loopback:
                return False
        except ValueError:
            return False
    return bool(addresses)


def check_bind(facts: Facts) -> Finding:
    title = "Bound to trusted interfaces only"
    addresses = _bind_addresses(facts)
    if addresses is None:
        return Finding("bind", title, "unknown", _no_config(facts, "bind"))
    shown = " ".join(addresses) or "(every interface)"
    if _loopback_only(addresses):
        return Finding("bind", title, "pass", f"bind {shown}: loopback only")
    fix = (
        "bind 127.0.0.1 -::1 (the seed), or the one private address the app uses, with a "
        "firewall rule for the app hosts only"
    )
    if not addresses or any(a in _WILDCARDS for a in addresses):
        return Finding("bind", title, "fail", f"bind {shown}: listens on every interface", fix)
    return Finding("bind", title, "warn", f"bind {shown}: reachable from the network", fix)


def check_protected_mode(facts: Facts) -> Finding:
    title = "protected-mode on"
    if facts.config is None or "protected-mode" not in facts.config:
        return Finding("protected-mode", title, "unknown", _no_config(facts, "protected-mode"))
    if facts.config["protected-mode"] == "yes":
        return Finding("protected-mode", title, "pass", "protected-mode yes")
    return Finding(
        "protected-mode",
        title,
        "fail",
        "protected-mode no: a server without a password answers every network client",
        "protected-mode yes",
    )


def check_tls(facts: Facts) -> Finding:
    title = "TLS for traffic that leaves the host"
    if facts.connection_tls:
        return Finding("tls", title, "pass", "this connection uses TLS (rediss://)")
    if facts.config is None:
        return Finding("tls", title, "unknown", _no_config(facts, "tls-port"))
    tls_port = facts.config.get("tls-port", "0")
    addresses = _bind_addresses(facts) or []
    if tls_port not in ("", "0"):
        if facts.config.get("port", "0") != "0" and not _loopback_only(addresses):
            return Finding(
                "tls",
                title,
                "warn",
                f"TLS on tls-port {tls_port}, but plain port "
                f"{facts.config.get('port')} is open on the network too",
                "set `port 0` so only TLS is served",
            )
        return Finding("tls", title, "pass", f"TLS on tls-port {tls_port}")
    if _loopback_only(addresses):
        return Finding(
            "tls",
            title,
            "pass",
            "no TLS, but the server listens on loopback only: traffic never leaves the host",
        )
    return Finding(
        "tls",
        title,
        "fail",
        "no TLS on a server reachable from the network: passwords, session ids and "
        "webhook data cross it in plain text",
        "tls-port 6380, port 0, tls-cert-file/tls-key-file/tls-ca-cert-file (the seed's "
        "production section), and REDIS_URL=rediss://…",
    )


def check_maxmemory(facts: Facts) -> Finding:
    title = "maxmemory set"
    if "maxmemory" not in facts.info:
        return Finding("maxmemory", title, "unknown", "INFO memory is not readable")
    limit = int(facts.info["maxmemory"])
    if limit > 0:
        return Finding("maxmemory", title, "pass", f"maxmemory {facts.info.get('maxmemory_human')}")
    return Finding(
        "maxmemory",
        title,
        "fail",
        "maxmemory 0: Redis grows until the kernel's OOM killer ends it",
        "maxmemory 256mb (the seed), sized to the host",
    )


def check_eviction_policy(facts: Facts) -> Finding:
    title = "Eviction cannot drop replay claims or sessions"
    policy = facts.info.get("maxmemory_policy") or (facts.config or {}).get("maxmemory-policy")
    if policy is None:
        return Finding("eviction-policy", title, "unknown", "INFO memory is not readable")
    if policy == "noeviction":
        return Finding(
            "eviction-policy",
            title,
            "pass",
            "maxmemory-policy noeviction: when full, writes fail loudly instead of "
            "dropping security state",
        )
    return Finding(
        "eviction-policy",
        title,
        "fail",
        f"maxmemory-policy {policy}: {_EVICTING}",
        "maxmemory-policy noeviction; if caching needs eviction, run a separate Redis "
        "with allkeys-lru for the cache only",
    )


def check_persistence(facts: Facts) -> Finding:
    title = "Persistence on, last save succeeded"
    fix = "save 900 1 / save 300 10 / save 60 10000 (the seed), and appendonly yes in production"
    statuses = {
        "rdb_last_bgsave_status": facts.info.get("rdb_last_bgsave_status"),
        "aof_last_write_status": facts.info.get("aof_last_write_status"),
    }
    failed = [f"{k}:{v}" for k, v in statuses.items() if v not in (None, "ok")]
    if failed:
        return Finding(
            "persistence",
            title,
            "fail",
            f"the last save failed ({', '.join(failed)}): see the Redis log "
            "(disk full? dir not writable?)",
            "free disk space / fix the permissions of `dir`, then BGSAVE",
        )
    aof = str(facts.info.get("aof_enabled", "")) == "1"
    if facts.config is None:
        if aof:
            return Finding("persistence", title, "pass", "appendonly yes (from INFO)")
        return Finding("persistence", title, "unknown", _no_config(facts, "the save points"))
    save = facts.config.get("save", "").strip()
    if save or aof:
        parts = ([f"save {save}"] if save else []) + (["appendonly yes"] if aof else [])
        return Finding("persistence", title, "pass", ", ".join(parts))
    return Finding(
        "persistence",
        title,
        "fail",
        "no save points and no AOF: a restart loses every replay claim and session",
        fix,
    )


def check_tcp_keepalive(facts: Facts) -> Finding:
    title = "tcp-keepalive on"
    if facts.config is None or "tcp-keepalive" not in facts.config:
        return Finding("tcp-keepalive", title, "unknown", _no_config(facts, "tcp-keepalive"))
    seconds = int(facts.config["tcp-keepalive"] or 0)
    if seconds <= 0:
        return Finding(
            "tcp-keepalive",
            title,
            "fail",
            "tcp-keepalive 0: connections of crashed clients are never reaped",
            "tcp-keepalive 300 (the seed)",
        )
    if seconds > 300:
        return Finding(
            "tcp-keepalive",
            title,
            "warn",
            f"tcp-keepalive {seconds}: dead peers linger",
            "tcp-keepalive 300",
        )
    return Finding("tcp-keepalive", title, "pass", f"tcp-keepalive {seconds}")


def check_version(facts: Facts) -> Finding:
    title = "Server version"
    version = str(facts.info.get("redis_version", ""))
    if not version:
        return Finding("version", title, "unknown", "INFO server is not readable")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        return Finding("version", title, "unknown", f"unrecognised version {version!r}")
    if major >= 7:
        return Finding("version", title, "pass", f"Redis {version}")
    if major == 6:
        return Finding(
            "version",
            title,
            "warn",
            f"Redis {version}: end of life, no more security fixes",
            "upgrade to Redis 7 (redis:7-alpine, or the distribution's package)",
        )
    return Finding(
        "version",
        title,
        "fail",
        f"Redis {version}: no ACLs, long out of support",
        "upgrade to Redis 7",
    )


CHECKS = (
    check_auth_required,
    check_default_user,
    check_app_user,
    check_privileged_users,
    check_dangerous_commands,
    check_bind,
    check_protected_mode,
    check_tls,
    check_maxmemory,
    check_eviction_policy,
    check_persistence,
    check_tcp_keepalive,
    check_version,
)

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "unknown": "magenta"}


def render_audit(report: AuditReport, console: Console) -> None:
    table = Table(title=f"upak redis audit: {report.target}", show_lines=True)
    table.add_column("check", style="bold", ratio=2)
    table.add_column("status", ratio=1)
    table.add_column("reason / fix", ratio=5)
    for f in report.findings:
        text = f.reason + (f"\n[dim]fix:[/] {f.fix}" if f.fix and f.status != "pass" else "")
        table.add_row(f.title, f"[{_STYLE[f.status]}]{f.status.upper()}[/]", text)
    console.print(table)
    counts = report.counts()
    console.print(", ".join(f"{n} {k}" for k, n in counts.items()))
    if not report.config_available:
        console.print(
            "[magenta]CONFIG is unavailable to this user: unknown checks need "
            "--config-command and --ops-user[/]"
        )

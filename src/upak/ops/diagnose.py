"""Failures as one line: what happened, and what to do about it.

Every `upak redis …` command ends a failure with exactly one line built here, never a
traceback. Redis client errors are translated into the operator's vocabulary (connection
refused, authentication failed, ACL permission denied, timeout, TLS mismatch, wrong DB index);
for a refused or reset connection a tiny plain-RESP probe tells whether the port speaks TLS,
so "TLS mismatch" is a diagnosis, not a guess.
"""

from __future__ import annotations

import contextlib
import errno
import socket

import redis.exceptions as rex

from upak.config import RedisTarget, Settings


class OpsError(Exception):
    """A failure of an operator command. `str()` is the one line the operator reads."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def scrub(text: str, target: RedisTarget) -> str:
    """Remove the password from any text that might echo it (belt and braces)."""
    if target.password:
        text = text.replace(target.password, "***")
    return " ".join(text.split())  # one line, whatever the source printed


def _speaks_plain_resp(host: str, port: int, timeout: float = 1.0) -> bool | None:
    """True if the port answers a plain-text PING as Redis does, False if it answers
    something else (a TLS server closes or sends an alert), None if it cannot be reached."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except TimeoutError:
        return None  # a hung server: no answer says nothing about TLS
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return False
        return None
    # A TLS server answers plain text by closing (b"") or resetting the connection.
    return reply[:1] in (b"+", b"-")


def _tls_hint(settings: Settings) -> str | None:
    """For standalone TCP targets: a one-line TLS diagnosis if the mismatch is the cause."""
    target = settings.redis
    if target.kind != "standalone":
        return None
    host, port = target.hosts[0]
    plain = _speaks_plain_resp(host, port)
    if plain is None:
        return None
    if target.tls and plain:
        return (
            f"TLS handshake failed at {target.address}: the server speaks plain RESP there, "
            "not TLS; use redis:// or point rediss:// at the server's tls-port"
        )
    if not target.tls and not plain:
        return (
            f"TLS mismatch at {target.address}: the server expects a TLS handshake; "
            "use rediss:// (and REDIS_SSL_CA_CERTS for its CA)"
        )
    return None


def explain(exc: BaseException, settings: Settings) -> str:
    """One line for a failure talking to the Redis of `settings`."""
    target = settings.redis
    where = target.address
    text = str(exc)
    low = text.lower()
    user = target.username or "default"

    if isinstance(exc, rex.AuthenticationError) or "wrongpass" in low or "noauth" in low:
        if "username-password" in low or "wrongpass" in low:
            return (
                f"authentication failed at {where} (WRONGPASS): the server rejected user "
                f"{user!r} with this password, or the user is disabled; check REDIS_PASSWORD "
                "and REDIS_USERNAME"
            )
        return (
            f"authentication required at {where} (NOAUTH): the server has a password and "
            "none was given; set REDIS_PASSWORD (and REDIS_USERNAME for an ACL user)"
        )
    if isinstance(exc, rex.NoPermissionError) or "noperm" in low or "no permissions" in low:
        detail = text.removeprefix("NOPERM ").strip()
        return (
            f"ACL permission denied for user {user!r} at {where}: {detail}; grant it with "
            "ACL SETUSER (see `upak redis config` for a least-privilege ACL file)"
        )
    if "db index is out of range" in low or "invalid db index" in low:
        return (
            f"wrong DB index {target.db} at {where}: the server has fewer databases "
            "(its `databases` setting); set REDIS_DB or the URL's /N to an existing index"
        )
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | OSError):
        if "ssl" in low or "certificate" in low or "tls" in low:
            reason = text.split("] ", 1)[-1].split(" (_ssl", 1)[0].strip(" .")
            return (
                f"TLS handshake failed at {where}: {reason}; check REDIS_SSL_CA_CERTS "
                "(the CA that signed the server's certificate) and the host name"
            )
        if "refused" in low or getattr(exc, "errno", None) == errno.ECONNREFUSED:
            return (
                f"connection refused at {where}: no Redis listens there; start it "
                "(systemctl start redis-server) or fix REDIS_URL / REDIS_HOST and REDIS_PORT"
            )
        hint = _tls_hint(settings)
        if hint:
            return hint
        if isinstance(exc, rex.TimeoutError | TimeoutError) or "timeout" in low:
            return (
                f"timeout talking to {where}: the server did not answer in time (hung, "
                "overloaded, or a firewall drops the packets); check it with redis-cli"
            )
        if "name or service not known" in low or "nodename nor servname" in low:
            return f"cannot resolve the host of {where}: check REDIS_HOST / REDIS_URL"
        if "reset" in low or "closed" in low:
            return (
                f"connection to {where} was closed by the server: it may be at its maxclients "
                "limit, or expect TLS; see its log"
            )
        if "no such file" in low and target.kind == "unix":
            return f"no unix socket at {where}: is redis-server running with `unixsocket`?"
        return f"cannot talk to Redis at {where}: {scrub(text, target)}"
    if isinstance(exc, rex.ResponseError):
        if text.lower().startswith(("unknown command", "err unknown command")):
            return f"the server at {where} does not know a command: {scrub(text, target)}"
        return f"Redis at {where} answered with an error: {scrub(text, target)}"
    if isinstance(exc, rex.RedisError):
        return f"Redis error at {where}: {scrub(text, target)}"
    return f"{type(exc).__name__}: {scrub(text, target)}"


def os_error(exc: OSError, doing: str = "") -> str:
    """One line for a local file-system failure (destination, dump file, data dir)."""
    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "the file system is read-only",
        errno.ENOENT: "no such file or directory",
    }
    reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename else ""
    prefix = f"{doing}: " if doing else ""
    return f"{prefix}{reason}{where}"


def is_disabled(exc: BaseException) -> bool:
    """True when an error says the command is unavailable to us: renamed away, denied by
    an ACL, or refused by a protection setting (DEBUG's enable-debug-command)."""
    low = str(exc).lower()
    return isinstance(exc, rex.NoPermissionError) or any(
        marker in low for marker in ("unknown command", "no permissions", "not allowed")
    )


def close_quietly(client: object) -> None:
    with contextlib.suppress(Exception):
        client.close()  # type: ignore[attr-defined]

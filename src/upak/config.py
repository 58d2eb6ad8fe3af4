"""Settings: one object, built once from the environment and `.env`, passed in everywhere.

The variable names and defaults are the seed's (`REDIS_HOST`, `REDIS_PORT`, `REDIS_DB`,
`REDIS_PASSWORD`, `REDIS_URL`, `REDIS_TTL=300`); the rest extend them for the features.
A bad value stops start-up with one line naming the variable and what it accepts
(`ConfigError`), and no secret ever reaches a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote, unquote

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Pure (stdlib only) and below config: each RATE_LIMIT_* is parsed into limits here, once.
from upak.ratelimit_policy import POLICY_SYNTAX, Limit, parse_policy

REDACTED = "***"
WEBHOOK_SECRET_MIN_BYTES = 24

RedisKind = Literal["standalone", "unix", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[RedisKind, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("unix", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
ACCEPTED_SCHEMES = ", ".join(f"{s}://" for s in _SCHEMES)


class ConfigError(Exception):
    """A setting has a value the service cannot start with. The message is one line."""


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, resolved from REDIS_URL or the REDIS_HOST/PORT/DB parts."""

    kind: RedisKind
    hosts: tuple[tuple[str, int], ...] = ()
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    path: str | None = None
    service_name: str | None = None

    def redacted_url(self) -> str:
        """The URL with the password replaced, safe for logs and CLI output."""
        return self._url(REDACTED if self.password else None)

    def _url(self, password: str | None) -> str:
        scheme = {
            "standalone": "redis",
            "unix": "unix",
            "sentinel": "redis+sentinel",
            "cluster": "redis+cluster",
        }[self.kind]
        if self.tls:
            scheme = scheme.replace("redis", "rediss", 1)
        auth = ""
        if self.username or password:
            auth = quote(self.username or "", safe="")
            if password:
                auth += ":" + (password if password == REDACTED else quote(password, safe=""))
            auth += "@"
        if self.kind == "unix":
            return f"unix://{auth}{self.path}?db={self.db}"
        hosts = ",".join(_join_host(h, p) for h, p in self.hosts)
        if self.kind == "sentinel":
            return f"{scheme}://{auth}{hosts}/{self.service_name}/{self.db}"
        if self.kind == "cluster":
            return f"{scheme}://{auth}{hosts}"
        return f"{scheme}://{auth}{hosts}/{self.db}"

    @property
    def address(self) -> str:
        """host:port (or the socket path) of the first node, for messages."""
        if self.kind == "unix":
            return str(self.path)
        host, port = self.hosts[0]
        return _join_host(host, port)

    def __str__(self) -> str:
        return self.redacted_url()


def _join_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_hosts(netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts: list[tuple[str, int]] = []
    for part in netloc.split(","):
        part = part.strip()
        if not part:
            raise ValueError("a host is empty")
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif part.count(":") == 1:
            host, _, port_text = part.partition(":")
        else:
            host, port_text = part, ""
        if not host:
            raise ValueError("a host is empty")
        port = default_port
        if port_text:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
            port = int(port_text)
        hosts.append((host, port))
    return tuple(hosts)


def _parse_db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"database index {text!r} is not a whole number")
    return int(text)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse REDIS_URL. Errors never contain the password."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(f"the scheme must be one of {ACCEPTED_SCHEMES}")
    kind, tls = _SCHEMES[scheme.lower()]
    rest, _, query_text = rest.partition("?")
    query = {k: v[-1] for k, v in parse_qs(query_text).items()}
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    username = password = None
    if userinfo:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon and password_text else None
    netloc, _, path = location.partition("/")
    if kind == "unix":
        socket_path = "/" + path if path else ""
        if netloc or not socket_path:
            raise ValueError("a unix:// URL names a socket path, as unix:///run/redis.sock?db=0")
        return RedisTarget(
            kind="unix",
            db=_parse_db(query.get("db", "0")),
            username=username,
            password=password,
            path=socket_path,
        )
    default_port = 26379 if kind == "sentinel" else 6379
    hosts = _parse_hosts(netloc, default_port)
    segments = [s for s in path.split("/") if s]
    service_name = None
    if kind == "sentinel":
        if not segments:
            raise ValueError(
                "a sentinel URL names the master service, as redis+sentinel://host:26379/mymaster/0"
            )
        service_name = segments.pop(0)
    if len(segments) > 1:
        raise ValueError("the path holds at most the database index")
    db = _parse_db(segments[0] if segments else query.get("db", "0"))
    if kind == "cluster" and db != 0:
        raise ValueError("Redis Cluster has only database 0")
    return RedisTarget(
        kind=kind,
        hosts=hosts,
        db=db,
        username=username,
        password=password,
        tls=tls,
        service_name=service_name,
    )


def parse_csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str) -> tuple[Network, ...]:
    """Comma-separated IPs and CIDRs. Raises ValueError naming the bad item."""
    networks: list[Network] = []
    for item in parse_csv(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


class WebhookSecret(SecretStr):
    """WEBHOOK_SECRET, parsed once when the settings are read: the text stays hidden as any
    SecretStr's does, and `keys` holds the decoded secrets (several while one rotates)."""

    def __init__(self, secret_value: str) -> None:
        super().__init__(secret_value)
        self.keys = tuple(parse_webhook_secrets(secret_value))


def parse_webhook_secrets(value: str) -> list[bytes]:
    """WEBHOOK_SECRET: comma-separated `whsec_<base64>` secrets (Standard Webhooks) -> keys.

    Unpadded base64 is accepted, as the official libraries do. Errors name the position of
    the bad secret, never its text.
    """
    keys = []
    for position, item in enumerate(parse_csv(value), start=1):
        body = item.removeprefix("whsec_")
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"secret #{position} is not whsec_ followed by base64") from None
        if len(key) < WEBHOOK_SECRET_MIN_BYTES:
            # Standard Webhooks asks for 24 to 64 random bytes: a short key can be guessed
            # offline from one signed delivery.
            raise ValueError(
                f"secret #{position} decodes to {len(key)} bytes, fewer than "
                f"{WEBHOOK_SECRET_MIN_BYTES}"
            )
        keys.append(key)
    if not keys:
        raise ValueError("no secret given")
    return keys


def _parsed(parse: Callable[[str], Any]) -> BeforeValidator:
    """A field's text from the environment (or a caller) parsed by `parse`; values of the
    field's own type pass as they are."""
    return BeforeValidator(lambda value: parse(value) if isinstance(value, str) else value)


# Settings kept parsed: each is read from text once, when Settings is built, and what the
# service reads is the typed value. NoDecode: the environment's text is not JSON.
Networks = Annotated[tuple[Network, ...], NoDecode, _parsed(parse_networks)]
Policy = Annotated[tuple[Limit, ...], NoDecode, _parsed(parse_policy)]


_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


def async_url(url: str) -> str:
    """DATABASE_URL with its async driver; ValueError (password-free) when it is unusable."""
    from sqlalchemy.engine import make_url  # SQLAlchemy is imported only when settings load

    try:
        parsed = make_url(url)
    except Exception:
        raise ValueError("not a database URL") from None
    backend = parsed.get_backend_name()
    if backend == "postgres":  # Heroku-style spelling
        parsed, backend = parsed.set(drivername="postgresql"), "postgresql"
    driver = _ASYNC_DRIVERS.get(backend)
    if driver is None:
        raise ValueError(f"the database {backend!r} is not supported")
    if parsed.get_driver_name() != driver:
        parsed = parsed.set(drivername=f"{backend}+{driver}")
    return parsed.render_as_string(hide_password=False)


# What each variable accepts, said once and used in every error message.
_ACCEPTS: dict[str, str] = {
    "REDIS_URL": f"a URL with one of the schemes {ACCEPTED_SCHEMES}",
    "REDIS_HOST": "a host name or IP address",
    "REDIS_PORT": "a whole number from 1 to 65535",
    "REDIS_DB": "a whole number from 0 to 15 (the seed's `databases 16`)",
    "REDIS_TTL": "a whole number of seconds, at least 1",
    "REDIS_KEY_PREFIX": "1 to 64 printable characters without spaces or braces, e.g. upak:",
    "UPAK_ENV": "development or production",
    "REDIS_SSL_CERT_REQS": "required, optional or none",
    "REDIS_SOCKET_TIMEOUT": "seconds, more than 0 and at most 30",
    "REDIS_CONNECT_TIMEOUT": "seconds, more than 0 and at most 30",
    "REDIS_HEALTH_INTERVAL": "seconds, from 0.05 to 10",
    "REDIS_PROBE_BACKOFF_MAX": "seconds, from 0.05 to 60",
    "REDIS_MAX_CONNECTIONS": "a whole number from 1 to 10000",
    "MEMORY_MAX_KEYS": "a whole number from 100 to 100000000",
    "UPAK_WORKERS": "a whole number from 1 to 64",
    "UPAK_PORT": "a whole number from 1 to 65535",
    "LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR",
    "SESSION_IDLE_TIMEOUT": "a whole number of seconds, at least 60",
    "SESSION_MAX_AGE": "a whole number of seconds, at least 60",
    "TRUSTED_PROXIES": "comma-separated IP addresses or CIDR networks",
    "YOOKASSA_ALLOWED_IPS": "comma-separated IP addresses or CIDR networks",
    "HEALTH_DETAIL_NETWORKS": "comma-separated IP addresses or CIDR networks",
    "WEBHOOK_SECRET": (
        f"comma-separated secrets of the form whsec_<base64 of at least "
        f"{WEBHOOK_SECRET_MIN_BYTES} random bytes>"
    ),
    "WEBHOOK_IDEMPOTENCY_TTL": "a whole number of seconds, at least 60",
    "RATE_LIMIT_FALLBACK_DIVISOR": "a whole number from 1 to 1024",
    "FALLBACK_MAX_BYTES": "a whole number of bytes, at least 65536",
    "FALLBACK_RATELIMIT_MAX_BYTES": "a whole number of bytes, at least 65536",
    "YOOKASSA_API_URL": "an http:// or https:// URL, e.g. https://api.yookassa.ru/v3",
    "YOOKASSA_SHOP_ID": "the shop id from YooKassa's dashboard (digits)",
    "YOOKASSA_TIMEOUT": "seconds, more than 0 and at most 30",
    "DATABASE_URL": "sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user:pass@host/db",
    "DATABASE_CONNECT_TIMEOUT": "seconds, more than 0 and at most 60",
    "DATABASE_POOL_TIMEOUT": "seconds, more than 0 and at most 60",
    "DATABASE_STATEMENT_TIMEOUT": "seconds, more than 0 and at most 300",
    "DATABASE_HEALTH_INTERVAL": "seconds, from 0.1 to 60",
    "RATE_LIMIT_DEFAULT": POLICY_SYNTAX,
    "RATE_LIMIT_LOGIN": POLICY_SYNTAX,
    "RATE_LIMIT_LOGIN_IP": POLICY_SYNTAX,
    "RATE_LIMIT_WEBHOOKS": POLICY_SYNTAX,
    "RATE_LIMIT_REGISTER": POLICY_SYNTAX,
    "RATE_LIMIT_LOGIN_SLOWDOWN": POLICY_SYNTAX,
    "LOGIN_SLOWDOWN_SECONDS": "seconds, from 0 to 30",
    "RATE_LIMIT_IPV6_PREFIX": "a prefix length from 32 to 128 (64: one /64 is one client)",
    "PASSWORD_HASH_CONCURRENCY": "a whole number from 1 to 256",
    "PASSWORD_HASH_QUEUE": "a whole number from 0 to 10000",
}


class Settings(BaseSettings):
    """Every setting of the service. Build with `load_settings()` for one-line errors."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        hide_input_in_errors=True,
        validate_default=True,
    )

    # --- Redis (the seed's names and defaults) ---
    redis_url: SecretStr | None = None
    redis_host: str = Field("localhost", min_length=1, max_length=255)
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_db: int = Field(0, ge=0, le=15)
    redis_password: SecretStr | None = None
    redis_username: str | None = None
    redis_ttl: int = Field(300, ge=1)
    redis_key_prefix: str = Field("upak:", pattern=r"^[!-~]{1,64}$")
    upak_env: Literal["development", "production"] = "development"

    # TLS for rediss:// (the seed's tls-port / tls-*-file settings, client side)
    redis_ssl_ca_certs: str | None = None
    redis_ssl_certfile: str | None = None
    redis_ssl_keyfile: str | None = None
    redis_ssl_cert_reqs: Literal["required", "optional", "none"] = "required"

    # Failing fast: short timeouts, a heartbeat, and a capped reconnect backoff.
    redis_socket_timeout: float = Field(0.5, gt=0, le=30)
    redis_connect_timeout: float = Field(0.5, gt=0, le=30)
    redis_health_interval: float = Field(0.5, ge=0.05, le=10)
    redis_probe_backoff_max: float = Field(0.5, ge=0.05, le=60)
    redis_max_connections: int = Field(64, ge=1, le=10000)
    # Writes that must survive a failover (logins, revocations, replay done-markers) wait for
    # this many replicas to acknowledge them (WAIT), at most REDIS_WAIT_TIMEOUT s; 0 = off.
    redis_wait_replicas: int = Field(0, ge=0, le=16)
    redis_wait_timeout: float = Field(0.1, gt=0, le=5)
    memory_max_keys: int = Field(200_000, ge=100, le=100_000_000)
    # The host tier (store/host.py), which the workers of one host share while Redis is away:
    # its directory (default $RUNTIME_DIRECTORY or $XDG_RUNTIME_DIR under upak/, else
    # /dev/shm/upak-<uid>/) and its byte budgets, one for rate-limit counters, one for the
    # cache it keeps during an outage on a one-host service, and one for the rest, so a flood
    # of client addresses or of cached pages cannot evict sessions or replay claims.
    upak_fallback_path: str | None = None
    fallback_max_bytes: int = Field(64 * 1024 * 1024, ge=65_536, le=1 << 40)
    fallback_ratelimit_max_bytes: int = Field(16 * 1024 * 1024, ge=65_536, le=1 << 40)
    fallback_cache_max_bytes: int = Field(16 * 1024 * 1024, ge=65_536, le=1 << 40)

    # --- Service ---
    upak_host: str = "127.0.0.1"
    upak_port: int = Field(8000, ge=1, le=65535)
    upak_workers: int = Field(1, ge=1, le=64)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    database_url: SecretStr = SecretStr("sqlite+aiosqlite:///./upak.db")
    # Deadlines of every database call, and how often a background check asks it (seconds).
    database_connect_timeout: float = Field(3.0, gt=0, le=60)
    database_pool_timeout: float = Field(3.0, gt=0, le=60)
    database_statement_timeout: float = Field(5.0, gt=0, le=300)
    database_health_interval: float = Field(1.0, ge=0.1, le=60)

    # --- Sessions and accounts ---
    # Argon2 hashes running at once per process (default: half the CPUs) and waiting for a slot;
    # beyond both a login answers 503 with Retry-After at once instead of queueing the CPU.
    password_hash_concurrency: int | None = Field(None, ge=1, le=256)
    password_hash_queue: int = Field(4, ge=0, le=10_000)
    session_idle_timeout: int = Field(86_400, ge=60)
    session_max_age: int = Field(30 * 86_400, ge=60)
    cors_origins: str = ""

    # --- Webhooks ---
    webhook_secret: SecretStr | None = None
    webhook_idempotency_ttl: int = Field(72 * 3600, ge=60)
    yookassa_allowed_ips: Networks | None = None  # None (or blank): YooKassa's own list
    trusted_proxies: Networks = ()
    # Who may read /health's details (Redis address, worker pid, errors): the host itself.
    health_detail_networks: Networks = parse_networks("127.0.0.0/8,::1/128")

    # --- YooKassa's API (checkout, confirmation, refunds); without credentials: development ---
    yookassa_api_url: str = Field("https://api.yookassa.ru/v3", pattern=r"^https?://[^\s/?#]+")
    yookassa_shop_id: str | None = Field(None, pattern=r"^[0-9]{1,32}$")
    yookassa_secret_key: SecretStr | None = None
    yookassa_timeout: float = Field(5.0, gt=0, le=30)

    # --- Rate limiting ---
    rate_limit_enabled: bool = True
    rate_limit_default: Policy = parse_policy("120/minute")
    # Failed logins (and password changes) per (email, client network): over it, that pair
    # is refused until the oldest failure ages out; the owner elsewhere is not affected.
    rate_limit_login: Policy = parse_policy("5/minute")
    # Every login and registration attempt per client network.
    rate_limit_login_ip: Policy = parse_policy("30/minute")
    # Registrations per email (their own key: they never count against logins).
    rate_limit_register: Policy = parse_policy("5/minute")
    # Failed logins per email across all networks: over it, attempts for that email are
    # slowed by LOGIN_SLOWDOWN_SECONDS, never refused (that would be a lockout again).
    rate_limit_login_slowdown: Policy = parse_policy("100/hour")
    login_slowdown_seconds: float = Field(2.0, ge=0, le=30)
    rate_limit_webhooks: Policy = parse_policy("600/minute")
    # IPv6 clients are keyed by this prefix (one /64 is one subscriber); IPv4 by address.
    rate_limit_ipv6_prefix: int = Field(64, ge=32, le=128)
    rate_limit_fallback_divisor: int | None = Field(None, ge=1, le=1024)

    @field_validator("redis_key_prefix")
    @classmethod
    def _no_hash_tags_in_prefix(cls, value: str) -> str:
        # Braces would become the Cluster hash tag and pin every key to one slot.
        if "{" in value or "}" in value:
            raise ValueError("braces are reserved for hash tags")
        return value

    @field_validator(
        "redis_username",
        "redis_ssl_ca_certs",
        "redis_ssl_certfile",
        "yookassa_shop_id",
        "yookassa_allowed_ips",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator(
        "redis_password", "redis_url", "webhook_secret", "yookassa_secret_key", mode="before"
    )
    @classmethod
    def _empty_secret_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else WebhookSecret(value.get_secret_value())

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr) -> SecretStr:
        async_url(value.get_secret_value())  # ValueError names the problem, never the password
        return value

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        if (self.yookassa_shop_id is None) != (self.yookassa_secret_key is None):
            raise ValueError(
                "YOOKASSA_SHOP_ID and YOOKASSA_SECRET_KEY go together: set both, or neither "
                "for development"
            )
        # Resolve the target now so a bad URL stops start-up, not the first request.
        object.__setattr__(self, "_redis_target", self._build_target())
        return self

    def _build_target(self) -> RedisTarget:
        if self.redis_url is not None:
            try:
                target = parse_redis_url(self.redis_url.get_secret_value())
            except ValueError as exc:
                raise ValueError(f"REDIS_URL: {exc}") from None
            # Parts given separately fill what the URL leaves out (a password kept apart).
            password = target.password
            if password is None and self.redis_password is not None:
                password = self.redis_password.get_secret_value()
            username = target.username or self.redis_username
            return RedisTarget(
                kind=target.kind,
                hosts=target.hosts,
                db=target.db,
                username=username,
                password=password,
                tls=target.tls,
                path=target.path,
                service_name=target.service_name,
            )
        return RedisTarget(
            kind="standalone",
            hosts=((self.redis_host, self.redis_port),),
            db=self.redis_db,
            username=self.redis_username,
            password=self.redis_password.get_secret_value() if self.redis_password else None,
        )

    @property
    def redis(self) -> RedisTarget:
        return self._redis_target  # type: ignore[attr-defined,no-any-return]

    @property
    def webhook_keys(self) -> tuple[bytes, ...]:
        """WEBHOOK_SECRET's decoded secrets (none when it is unset)."""
        secret = self.webhook_secret
        return secret.keys if isinstance(secret, WebhookSecret) else ()

    @property
    def production(self) -> bool:
        return self.upak_env == "production"

    @property
    def fallback_divisor(self) -> int:
        """Each host's share of a limit during an outage: the number of hosts (default 1). The
        workers of one host count together in the host tier, so they need no share."""
        return self.rate_limit_fallback_divisor or 1

    @property
    def yookassa_configured(self) -> bool:
        """Shop credentials are set: notifications are confirmed with YooKassa's API."""
        return self.yookassa_shop_id is not None and self.yookassa_secret_key is not None

    @property
    def cors_origin_list(self) -> list[str]:
        return parse_csv(self.cors_origins)


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]).upper() if error["loc"] else ""
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if not name and message.startswith("REDIS_URL: "):
            name, message = "REDIS_URL", message.removeprefix("REDIS_URL: ")
        accepts = _ACCEPTS.get(name)
        if name:
            text = f"{name} is invalid ({message})"
            if accepts:
                text += f"; it accepts {accepts}"
        else:
            text = message
        parts.append(text)
    return "; ".join(parts)


def load_settings(env_file: str | None = ".env", **overrides: Any) -> Settings:
    """Build Settings, turning validation errors into one-line `ConfigError`s."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    except (ValueError, OSError) as exc:
        # e.g. an unreadable .env file, or a value pydantic could not decode at all.
        raise ConfigError(f"settings could not be read: {exc}") from None

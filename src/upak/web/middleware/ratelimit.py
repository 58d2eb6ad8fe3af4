"""Rate limiting as pure ASGI middleware: one decision (one script call) per request.

Which limits apply is decided by path, before routing, so that every limit of a request goes
into the same decision:

* `/health` and `/metrics`: never limited (probes must see an overloaded service);
* `/webhooks/…`: RATE_LIMIT_WEBHOOKS by source network (instead of the default);
* `POST /auth/login`: the default, RATE_LIMIT_LOGIN_IP by client network, and "is this
  (email, network) under RATE_LIMIT_LOGIN failures?", asked without recording; the route
  records a failure (`record_failed_attempt`) only when the password proves wrong. So a
  stranger's failures block the stranger's network for that email, never the owner's own.
  Over RATE_LIMIT_LOGIN_SLOWDOWN failures for the email from all networks together, each
  attempt for it waits LOGIN_SLOWDOWN_SECONDS first: slowed, never refused;
* `POST /auth/register`: the default, RATE_LIMIT_LOGIN_IP, and RATE_LIMIT_REGISTER by email,
  a key of its own (registrations never count against logins);
* `POST /auth/password`: the default, and RATE_LIMIT_LOGIN failures by user;
* everything else: RATE_LIMIT_DEFAULT by user id when a session is present, else the client.

The client is its IPv4 address or its IPv6 /RATE_LIMIT_IPV6_PREFIX network (`client_network`).
Every limited response, admitted or refused, carries `RateLimit-Policy` and `RateLimit` (IETF
httpapi ratelimit-headers draft); a refusal is 429 with `Retry-After` and problem+json.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from upak.config import Settings
from upak.domain.emails import email_key
from upak.features.ratelimit import (
    Check,
    Decision,
    NamedLimit,
    RateLimiter,
    client_network,
    identity_token,
    named_limits,
)
from upak.store import KeySpace, Store
from upak.web.client_ip import Network, client_ip
from upak.web.middleware.guard import RESPONSE_HEADERS
from upak.web.problems import problem

SESSION_SCOPE_KEY = "upak.session"  # where the session middleware leaves the session
FAILED_ATTEMPT_SCOPE_KEY = "upak.ratelimit.failed_attempt"  # what a failure should record
_MAX_EMAIL = 320


@dataclass(frozen=True)
class RateLimitRules:
    """Which limits apply where (the paths are the service's; the limits are the settings')."""

    default: tuple[NamedLimit, ...]
    login_failures: tuple[NamedLimit, ...]  # per (email, network), recorded on failure
    login_ip: tuple[NamedLimit, ...]
    webhooks: tuple[NamedLimit, ...]
    register: tuple[NamedLimit, ...] = ()
    login_slowdown: tuple[NamedLimit, ...] = ()  # per email, recorded on failure
    password_failures: tuple[NamedLimit, ...] = ()  # per user, recorded on failure
    slowdown_seconds: float = 0.0
    ipv6_prefix: int = 64
    exempt_paths: frozenset[str] = frozenset({"/health", "/metrics"})
    login_path: str = "/auth/login"
    register_path: str = "/auth/register"
    password_path: str = "/auth/password"
    webhook_prefix: str = "/webhooks/"
    trusted_proxies: tuple[Network, ...] = field(default=())

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimitRules:
        return cls(
            default=named_limits("default", settings.rate_limit_default),
            login_failures=named_limits("login", settings.rate_limit_login),
            login_ip=named_limits("login-ip", settings.rate_limit_login_ip),
            webhooks=named_limits("webhooks", settings.rate_limit_webhooks),
            register=named_limits("register", settings.rate_limit_register),
            login_slowdown=named_limits("login-slowdown", settings.rate_limit_login_slowdown),
            password_failures=named_limits("password", settings.rate_limit_login),
            slowdown_seconds=settings.login_slowdown_seconds,
            ipv6_prefix=settings.rate_limit_ipv6_prefix,
            trusted_proxies=settings.trusted_proxies,
        )


@dataclass(frozen=True)
class FailedAttempt:
    """What a wrong password on this request counts against (left in the scope for the
    route, which alone knows the outcome)."""

    limiter: RateLimiter
    checks: tuple[Check, ...]

    async def record(self) -> None:
        # One decision per key: all-or-nothing would skip the per-email count whenever the
        # (email, network) count is full, and vice versa.
        await asyncio.gather(*(self.limiter.decide([check]) for check in self.checks))


async def record_failed_attempt(scope: Scope) -> None:
    """Count a failed login or password change (no-op when rate limiting is off)."""
    attempt: FailedAttempt | None = scope.get(FAILED_ATTEMPT_SCOPE_KEY)
    if attempt is not None:
        await attempt.record()


_policy_fields: dict[tuple[NamedLimit, ...], bytes] = {}


def _policy_field(limits: tuple[NamedLimit, ...]) -> bytes:
    # The policies of a request repeat request after request: join each combination once.
    field = _policy_fields.get(limits)
    if field is None:
        field = b", ".join(limit.policy_member for limit in limits)
        if len(_policy_fields) < 1024:
            _policy_fields[limits] = field
    return field


def decision_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """`RateLimit-Policy` and `RateLimit` (and `Retry-After` on refusal) for `decision`."""
    states = decision.states
    if len(states) == 1:  # most requests: one limit, nothing to join
        policy, current = states[0].limit.policy_member, states[0].header_member
    else:
        policy = _policy_field(tuple(state.limit for state in states))
        current = b", ".join([state.header_member for state in states])
    headers = [(b"ratelimit-policy", policy), (b"ratelimit", current)]
    if not decision.allowed:
        headers.append((b"retry-after", b"%d" % max(1, decision.retry_after)))
    return headers


async def refuse(decision: Decision, scope: Scope, receive: Receive, send: Send) -> None:
    """The 429: problem+json, Retry-After, and the RateLimit fields."""
    retry = max(1, decision.retry_after)
    response = problem(
        429,
        "Too many requests",
        f"Retry in {retry} s.",
        retry_after=retry,
    )
    response.raw_headers.extend(decision_headers(decision))
    await response(scope, receive, send)


class RateLimitMiddleware:
    # Bounds of the per-process memo tables below (cleared whole when full: simple, and a
    # miss only costs the work the table saves).
    MEMO_MAX = 50_000

    def __init__(self, app: ASGIApp, limiter: RateLimiter, rules: RateLimitRules) -> None:
        self.app = app
        self.limiter = limiter
        self.rules = rules
        # client address (the scope's, behind trusted proxies) -> identity token: parsing
        # addresses with `ipaddress` is most of this middleware's own cost, and clients repeat.
        self._identities: dict[str | None, str] = {}
        # (limits, identity) -> its checks (the key strings).
        self._checks_memo: dict[tuple[int, str], list[Check]] = {}
        # session user id -> the default limit's checks for that user.
        self._user_checks: dict[object, list[Check]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.rules.exempt_paths:
            await self.app(scope, receive, send)
            return
        slow_down = None
        if scope["method"] != "POST":
            checks = self._checks(scope)
        elif scope["path"] == self.rules.login_path:
            checks, slow_down, receive = await self._login_checks(scope, receive)
        elif scope["path"] == self.rules.register_path:
            checks, receive = await self._register_checks(scope, receive)
        elif scope["path"] == self.rules.password_path:
            checks = self._password_checks(scope)
        else:
            checks = self._checks(scope)
        if slow_down is None:
            decision = await self.limiter.decide(checks)
        else:  # both asked in one loop step: one script call
            decision, ceiling = await asyncio.gather(
                self.limiter.decide(checks), self.limiter.decide(slow_down)
            )
            if decision.allowed and not ceiling.allowed and self.rules.slowdown_seconds:
                await asyncio.sleep(self.rules.slowdown_seconds)
        if not decision.allowed:
            await refuse(decision, scope, receive, send)
            return
        # Appended to the answer by the outermost layer's one `send` wrapper (RequestGuard).
        scope[RESPONSE_HEADERS] = decision_headers(decision)
        await self.app(scope, receive, send)

    def _client(self, scope: Scope) -> str:
        """The client IP's identity token. The scope's client is already the one behind any
        trusted proxies (uvicorn's ProxyHeadersMiddleware rewrote it), so it is the memo key."""
        peer = scope.get("client")
        memo_key = peer[0] if peer else None
        token = self._identities.get(memo_key)
        if token is None:
            address = client_ip(scope)
            token = identity_token("ip", client_network(address, self.rules.ipv6_prefix))
            if len(self._identities) >= self.MEMO_MAX:
                self._identities.clear()
            self._identities[memo_key] = token
        return token

    def _checks_for(self, limits: tuple[NamedLimit, ...], identity: str) -> list[Check]:
        memo_key = (id(limits), identity)
        checks = self._checks_memo.get(memo_key)
        if checks is None:
            checks = [self.limiter.check_for(limit, identity) for limit in limits]
            if len(self._checks_memo) >= self.MEMO_MAX:
                self._checks_memo.clear()
            self._checks_memo[memo_key] = checks
        return checks

    def _checks(self, scope: Scope) -> list[Check]:
        """Every request but a login's: its limits need nothing from the body."""
        if scope["path"].startswith(self.rules.webhook_prefix):
            return self._checks_for(self.rules.webhooks, self._client(scope))
        user_id = getattr(scope.get(SESSION_SCOPE_KEY), "user_id", None)
        if user_id is None:
            return self._checks_for(self.rules.default, self._client(scope))
        checks = self._user_checks.get(user_id)
        if checks is None:  # a user's token is a hash: made once per user, not per request
            checks = self._checks_for(self.rules.default, identity_token("user", str(user_id)))
            if len(self._user_checks) >= self.MEMO_MAX:
                self._user_checks.clear()
            self._user_checks[user_id] = checks
        return checks

    async def _login_checks(
        self, scope: Scope, receive: Receive
    ) -> tuple[list[Check], list[Check] | None, Receive]:
        """A login: the default and the network's attempts, and, for the body's email, "is
        this (email, network) under its failure limit?" plus the per-email slow-down ceiling,
        both asked without recording; failures are recorded by the route."""
        body, receive = await _read_body(receive)
        client = self._client(scope)
        checks = self._checks(scope) + self._checks_for(self.rules.login_ip, client)
        email = _email_of(body)
        if email is None:
            return checks, None, receive
        pair = identity_token("login", f"{email}\n{client}")
        failures = [self.limiter.check_for(limit, pair) for limit in self.rules.login_failures]
        who = identity_token("email", email)
        ceiling = [self.limiter.check_for(limit, who) for limit in self.rules.login_slowdown]
        scope[FAILED_ATTEMPT_SCOPE_KEY] = FailedAttempt(self.limiter, (*failures, *ceiling))
        checks += [check._replace(limit=check.limit.peeking()) for check in failures]
        slow_down = [check._replace(limit=check.limit.peeking()) for check in ceiling]
        return checks, slow_down or None, receive

    async def _register_checks(self, scope: Scope, receive: Receive) -> tuple[list[Check], Receive]:
        """A registration: the default, the network's attempts, and registrations per email."""
        body, receive = await _read_body(receive)
        checks = self._checks(scope) + self._checks_for(self.rules.login_ip, self._client(scope))
        email = _email_of(body)
        if email is not None:
            who = identity_token("register", email)
            checks += [self.limiter.check_for(limit, who) for limit in self.rules.register]
        return checks, receive

    def _password_checks(self, scope: Scope) -> list[Check]:
        """A password change: the default, and "is this user under its failure limit?"."""
        checks = self._checks(scope)
        user_id = getattr(scope.get(SESSION_SCOPE_KEY), "user_id", None)
        if user_id is None:
            return checks  # the route answers 401
        who = identity_token("password", str(user_id))
        failures = tuple(
            self.limiter.check_for(limit, who) for limit in self.rules.password_failures
        )
        scope[FAILED_ATTEMPT_SCOPE_KEY] = FailedAttempt(self.limiter, failures)
        return checks + [check._replace(limit=check.limit.peeking()) for check in failures]


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole body (RequestGuard, outside us, bounds it) and replay it downstream."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # The client went away: pass that on as it came.
            replayed: list[Message] = [message]
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            replayed = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
            break

    async def replay() -> Message:
        return replayed.pop() if replayed else await receive()

    return b"".join(chunks), replay


def _email_of(body: bytes) -> str | None:
    """The normalised `email` of a JSON body, or None (the route will answer 422 for it)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        return None
    email = data.get("email") if isinstance(data, dict) else None
    if not isinstance(email, str) or len(email) > _MAX_EMAIL:
        return None
    try:
        return email_key(email)
    except ValueError:
        return None


def build_rate_limiter(
    settings: Settings, store: Store, keys: KeySpace, *, clock: Callable[[], float] = time.time
) -> RateLimiter | None:
    """The app's limiter, or None when RATE_LIMIT_ENABLED is false."""
    if not settings.rate_limit_enabled:
        return None
    return RateLimiter(store, keys, divisor=settings.fallback_divisor, clock=clock)


def install_rate_limiting(app: ASGIApp, limiter: RateLimiter, settings: Settings) -> None:
    """Add the middleware to a FastAPI app (call before adding the session middleware, so
    that sessions run first and their user id keys the default limit). Its RateLimit fields
    reach the answer through `RequestGuard`, which the app puts outside every layer."""
    app.add_middleware(  # type: ignore[attr-defined]
        RateLimitMiddleware, limiter=limiter, rules=RateLimitRules.from_settings(settings)
    )


__all__: Sequence[str] = (
    "RateLimitMiddleware",
    "RateLimitRules",
    "build_rate_limiter",
    "decision_headers",
    "install_rate_limiting",
    "record_failed_attempt",
    "refuse",
)

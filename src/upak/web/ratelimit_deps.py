"""A route's own rate limit, declared as a FastAPI dependency.

    @router.post("/exports", dependencies=[Depends(rate_limit("3/minute", name="exports"))])

The policy string is parsed when the route is defined, so a typo stops start-up. The limit
applies on top of the middleware's (the default still counts the request); its decision is
one more script call. Admitted responses get its RateLimit fields added (beside the
middleware's, as a second field line, which the draft's List syntax allows); a refusal is the
same 429 problem+json with Retry-After as the middleware's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import HTTPException, Request, Response

from upak.features.ratelimit import identity_token, named_limits
from upak.web.client_ip import client_ip
from upak.web.middleware.ratelimit import SESSION_SCOPE_KEY, decision_headers
from upak.web.services import services_of

KeyFunction = Callable[[Request], str | None]


def client_key(request: Request) -> str:
    """The client IP, believing X-Forwarded-For only from TRUSTED_PROXIES."""
    address = client_ip(request.scope)
    return identity_token("ip", str(address) if address is not None else "unknown")


def user_or_client_key(request: Request) -> str:
    """The session's user id when there is one, else the client IP (the default's key)."""
    user_id = getattr(request.scope.get(SESSION_SCOPE_KEY), "user_id", None)
    return client_key(request) if user_id is None else identity_token("user", str(user_id))


def rate_limit(
    policy: str,
    *,
    name: str,
    key: Literal["user", "ip"] | KeyFunction = "user",
) -> Callable[[Request, Response], Awaitable[None]]:
    """A dependency applying `policy` (RATE_LIMIT_* syntax) to the route, keyed by `key`.

    `key` is "user" (user id, else client IP), "ip", or a function of the request returning
    an identity string (None: not limited). Raises ValueError now for a malformed policy.
    """
    limits = named_limits(name, policy)
    if key == "user":
        key_of: KeyFunction = user_or_client_key
    elif key == "ip":
        key_of = client_key
    else:
        custom = key

        def key_of(request: Request) -> str | None:
            value = custom(request)
            return None if value is None else identity_token(f"route-{name}", value)

    async def limit_route(request: Request, response: Response) -> None:
        limiter = services_of(request).ratelimit
        identity = key_of(request)
        if limiter is None or identity is None:
            return
        decision = await limiter.decide([limiter.check_for(limit, identity) for limit in limits])
        headers = {k.decode(): v.decode() for k, v in decision_headers(decision)}
        if not decision.allowed:
            raise HTTPException(429, "Too many requests", headers=headers)
        for field, value in headers.items():
            response.headers.append(field, value)

    return limit_route

"""The shapes of the API's bodies, for `/openapi.json` and for the routes that return models.

Routes that render their own bytes (`/plans`, `/me`: cached representations with ETags) name
a model here as `response_model=` only to document it; FastAPI does not re-validate a
`Response` they return. The webhook routes read the raw body (signatures are over the exact
bytes), so `YooKassaNotification` documents their request body without parsing it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

# An email as the API accepts it: `format: email` in the schema, so a client (or a fuzzer)
# knows an empty or malformed one is refused before it tries. The routes' own validators
# still decide (a login answers the same 401 for every failure).
EmailText = Annotated[
    str,
    Field(
        max_length=320,
        json_schema_extra={"format": "email"},
        description="An email address; special-use domains (RFC 6761: `.test`, `.local`, "
        "`.invalid`, `localhost`, …) are refused.",
    ),
]
# A moment as the routes render it (ISO 8601 with offset); typed as text so documenting it
# never changes the bytes a route already sends.
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the field, e.g. `email` or `object.id`.")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error (`application/problem+json`)."""

    type: str = Field("about:blank", examples=["about:blank"])
    title: str = Field(examples=["Too many requests"])
    status: int = Field(ge=100, le=599)
    detail: str | None = Field(None, description="What happened and what to do.")


class ValidationProblem(Problem):
    """A 422: `detail` says what is wrong in one sentence, `errors` names each field."""

    detail: str = Field(examples=["Some fields are missing or invalid."])
    errors: list[FieldError]


class Account(BaseModel):
    id: int
    email: EmailText


class Registered(BaseModel):
    """The same answer whether or not the email was free (no account enumeration): the
    account's id comes with the first login."""

    email: EmailText
    detail: str


class Me(Account):
    plan: str | None = Field(description="The subscribed plan's id; null until a payment.")
    subscription_expires_at: Timestamp | None


class SessionInfo(BaseModel):
    id: str = Field(description="The session's handle (not its secret token).")
    created_at: Timestamp
    last_seen_at: Timestamp
    ip: str | None
    user_agent: str | None
    current: bool = Field(description="Whether this is the session making the request.")


class Money(BaseModel):
    value: str = Field(pattern=r"^\d+\.\d{2}$", examples=["490.00"])
    currency: str = Field(examples=["RUB"])


class Plan(BaseModel):
    id: str
    title: str
    price: Money
    period_days: int


class PaymentItem(BaseModel):
    id: int
    provider_payment_id: str = Field(description="YooKassa's payment id.")
    plan: str
    amount: Money
    status: Literal["pending", "succeeded", "canceled", "refunded"]
    created_at: Timestamp


class WebhookResult(BaseModel):
    status: Literal["processed", "duplicate", "ignored"] = Field(
        description="`ignored`: verified but not applicable (not a succeeded payment at a "
        "plan's price for a known user); the reason is in the server log."
    )


class Health(BaseModel):
    """Anyone gets `status` and `store`; direct callers from HEALTH_DETAIL_NETWORKS get the
    rest too (see upak.web.routes.health)."""

    status: Literal["ok", "degraded"]
    store: Literal["redis", "memory"]
    database: Literal["ok", "down"] | None = None
    database_reason: str | None = None
    redis: str | None = Field(None, description="The Redis URL, password redacted.")
    worker: int | None = Field(None, description="The process id of the worker that answered.")
    since: float | None = None
    condition: str | None = Field(
        None, description="Why the store is on memory: unreachable, timeout, oom, busy, ..."
    )
    last_error: str | None = None
    latency_ms: float | None = None
    fallback_calls: int | None = None
    bypassed_calls: int | None = None
    host_cached_calls: int | None = Field(
        None,
        description="Cache calls the host tier served during an outage (caching per host, "
        "when this host is the whole service).",
    )
    switches_to_memory: int | None = None
    switches_to_redis: int | None = None
    followed_host: int | None = Field(
        None,
        description="Switches to the fallback made because another worker of this "
        "host found Redis unable to serve (the host's workers degrade as one).",
    )
    fallback: Literal["host", "process"] | None = Field(
        None,
        description="Where the outage is served from: the host tier every worker of "
        "this host shares, or this process's memory (one worker).",
    )
    written_back: int | None = None
    writeback_dropped: int | None = None
    pending_writeback: int | None = None
    read_through_calls: int | None = None
    hold_seconds: float | None = None
    nodes: list[dict[str, Any]] | None = Field(
        None, description="Redis Cluster: per master's slot range, its node and its state."
    )


# The notification's rules as `parse_notification` applies them, so the schema refuses
# exactly what the server refuses: texts are non-empty and at most 128 characters.
NotificationText = Annotated[str, Field(min_length=1, max_length=128)]
# What Python's Decimal reads as a finite number (PEP 515 underscores included).
_DECIMAL = r"^[+-]?(\d(_?\d)*(\.(\d(_?\d)*)?)?|\.\d(_?\d)*)([eE][+-]?\d(_?\d)*)?$"


class NotificationAmount(BaseModel):
    value: NotificationText = Field(pattern=_DECIMAL, examples=["490.00"])
    currency: NotificationText = Field(examples=["RUB"])


class NotificationMetadata(BaseModel):
    """What the checkout put on the payment; without both fields the payment is `ignored`."""

    user_id: NotificationText | None = Field(None, description="The paying user's id, as text.")
    plan: NotificationText | None = Field(None, description="A plan id from `GET /plans`.")


class NotificationObject(BaseModel):
    id: str = Field(min_length=1, max_length=64, description="YooKassa's payment id.")
    status: NotificationText = Field(examples=["succeeded"])
    amount: NotificationAmount | None = None
    metadata: NotificationMetadata | None = None


class YooKassaNotification(BaseModel):
    """YooKassa's notification. Only `payment.succeeded` at a plan's exact price, with
    `object.metadata.user_id` and `object.metadata.plan` set, extends a subscription."""

    type: Literal["notification"] = "notification"
    event: NotificationText = Field(examples=["payment.succeeded"])
    object: NotificationObject

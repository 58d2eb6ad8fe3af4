"""YooKassa's REST API (https://yookassa.ru/developers/api), async, with a deadline per call.

The official `yookassa` SDK is synchronous (requests): called on the event loop it would stall
every request while YooKassa answers. This client speaks the documented API with httpx; the
suite keeps the SDK as its oracle (our request bodies pass its request models, responses built
with its response models read correctly here).

Every call has one deadline (YOOKASSA_TIMEOUT) for connecting, sending and reading together.
Whatever goes wrong upstream is one `YooKassaUnavailable` saying what happened, never the
secret key; a payment or refund YooKassa does not know is `None`, not an error.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

if TYPE_CHECKING:
    from upak.config import Settings

log = logging.getLogger("upak.yookassa")

# How long a caller is told to wait after a fault (Retry-After), seconds.
RETRY_AFTER = 30


class YooKassaUnavailable(Exception):
    """YooKassa could not answer usefully: unreachable, too slow, 5xx, refused our credentials,
    or said something we cannot read. The message is one line and safe to log."""

    def __init__(self, message: str, *, retry_after: int = RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RemotePayment:
    """What YooKassa says about a payment: the facts a subscription may rest on."""

    id: str
    status: str
    amount: Decimal
    currency: str
    test: bool
    user_id: str | None = None
    plan: str | None = None
    confirmation_url: str | None = None


@dataclass(frozen=True)
class RemoteRefund:
    id: str
    payment_id: str
    status: str
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class CheckoutRequest:
    """One payment to create: capture at once, redirect the buyer back to `return_url`."""

    amount: Decimal
    currency: str
    description: str
    user_id: int
    plan: str
    return_url: str

    def body(self) -> dict[str, Any]:
        return {
            "amount": {"value": f"{self.amount:.2f}", "currency": self.currency},
            "capture": True,
            "confirmation": {"type": "redirect", "return_url": self.return_url},
            "description": self.description,
            "metadata": {"user_id": str(self.user_id), "plan": self.plan},
        }


def _amount(data: dict[str, Any], where: str) -> tuple[Decimal, str]:
    raw = data.get("amount")
    if not isinstance(raw, dict):
        raise YooKassaUnavailable(f"YooKassa's {where} has no amount")
    try:
        value = Decimal(str(raw.get("value")))
    except InvalidOperation:
        raise YooKassaUnavailable(f"YooKassa's {where} amount is not a number") from None
    currency = raw.get("currency")
    if not value.is_finite() or not isinstance(currency, str):
        raise YooKassaUnavailable(f"YooKassa's {where} amount is not readable")
    return value, currency


def _string(data: dict[str, Any], name: str, where: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise YooKassaUnavailable(f"YooKassa's {where} has no {name}")
    return value


def _object(data: dict[str, Any], name: str) -> dict[str, Any]:
    """The JSON object under `name`; an empty one when it is missing or not an object."""
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def read_payment(data: Any) -> RemotePayment:
    """A payment object as the API returns it (GET/POST /payments)."""
    if not isinstance(data, dict):
        raise YooKassaUnavailable("YooKassa's payment is not a JSON object")
    amount, currency = _amount(data, "payment")
    metadata, confirmation = _object(data, "metadata"), _object(data, "confirmation")
    url = confirmation.get("confirmation_url")
    user_id, plan = metadata.get("user_id"), metadata.get("plan")
    return RemotePayment(
        id=_string(data, "id", "payment"),
        status=_string(data, "status", "payment"),
        amount=amount,
        currency=currency,
        test=data.get("test") is True,
        user_id=user_id if isinstance(user_id, str) else None,
        plan=plan if isinstance(plan, str) else None,
        confirmation_url=url if isinstance(url, str) else None,
    )


def read_refund(data: Any) -> RemoteRefund:
    if not isinstance(data, dict):
        raise YooKassaUnavailable("YooKassa's refund is not a JSON object")
    amount, currency = _amount(data, "refund")
    return RemoteRefund(
        id=_string(data, "id", "refund"),
        payment_id=_string(data, "payment_id", "refund"),
        status=_string(data, "status", "refund"),
        amount=amount,
        currency=currency,
    )


@dataclass
class YooKassaAPI:
    """A client for one shop. `close()` it with the app."""

    base_url: str
    shop_id: str
    secret_key: SecretStr = field(repr=False)
    timeout: float = 5.0
    transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False)
    _client: httpx.AsyncClient = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._client = httpx.AsyncClient(
            base_url=self.base_url.rstrip("/") + "/",
            auth=httpx.BasicAuth(self.shop_id, self.secret_key.get_secret_value()),
            timeout=httpx.Timeout(self.timeout),
            transport=self.transport,
            headers={"User-Agent": "upak-backend"},
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def create_payment(self, request: CheckoutRequest, idempotence_key: str) -> RemotePayment:
        """POST /payments. The same `idempotence_key` within 24 h is the same payment."""
        data = await self._call(
            "POST", "payments", json=request.body(), idempotence_key=idempotence_key
        )
        if data is None:
            raise YooKassaUnavailable("YooKassa answered 404 to POST /payments")
        return read_payment(data)

    async def get_payment(self, payment_id: str) -> RemotePayment | None:
        data = await self._call("GET", f"payments/{_path_part(payment_id)}")
        return None if data is None else read_payment(data)

    async def get_refund(self, refund_id: str) -> RemoteRefund | None:
        data = await self._call("GET", f"refunds/{_path_part(refund_id)}")
        return None if data is None else read_refund(data)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        idempotence_key: str | None = None,
    ) -> Any:
        what = f"{method} /{path.split('/', 1)[0]}"
        headers = {"Idempotence-Key": idempotence_key} if idempotence_key else None
        try:
            # httpx's timeout is per phase; the outer one bounds the whole call.
            async with asyncio.timeout(self.timeout):
                response = await self._client.request(method, path, json=json, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            raise YooKassaUnavailable(
                f"YooKassa did not answer {what} within {self.timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise YooKassaUnavailable(
                f"YooKassa is unreachable for {what}: {type(exc).__name__}"
            ) from None
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            log.error(
                "YooKassa refused our credentials on %s (%s): check YOOKASSA_SHOP_ID and "
                "YOOKASSA_SECRET_KEY",
                what,
                _error_code(response),
            )
            raise YooKassaUnavailable(f"YooKassa refused the shop's credentials on {what}")
        if response.status_code >= 400:
            retry = RETRY_AFTER if response.status_code >= 500 else 60
            raise YooKassaUnavailable(
                f"YooKassa answered {response.status_code} ({_error_code(response)}) to {what}",
                retry_after=retry,
            )
        try:
            return response.json()
        except ValueError:
            raise YooKassaUnavailable(f"YooKassa's answer to {what} is not JSON") from None


def _path_part(identifier: str) -> str:
    # Ids come from notifications (outside input): never let one change the path.
    return quote(identifier, safe="")


def _error_code(response: httpx.Response) -> str:
    """YooKassa's error body is {"type": "error", "id", "code", "description"}: the code."""
    try:
        body = response.json()
    except ValueError:
        return "no error body"
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else "no error code"


def api_from_settings(settings: Settings) -> YooKassaAPI | None:
    """The shop's client, or None without credentials (development)."""
    if settings.yookassa_shop_id is None or settings.yookassa_secret_key is None:
        return None
    return YooKassaAPI(
        base_url=settings.yookassa_api_url,
        shop_id=settings.yookassa_shop_id,
        secret_key=settings.yookassa_secret_key,
        timeout=settings.yookassa_timeout,
    )

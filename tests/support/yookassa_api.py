"""A local stand-in for YooKassa's REST API (https://yookassa.ru/developers/api), on a free port.

It follows the documented surface the service uses: `POST /v3/payments` (Basic auth, a
required `Idempotence-Key`: the same key is the same payment), `GET /v3/payments/{id}`,
`GET /v3/refunds/{id}`, and error bodies as YooKassa sends them
(`{"type": "error", "id", "code", "description"}`). The `yookassa` SDK is the oracle both
ways: a request body is accepted only if the SDK's `PaymentRequest` accepts it, and every
answer is built with the SDK's `PaymentResponse` / `RefundResponse`.

The test side drives it: `succeed`, `cancel`, `refund` move a payment on as a buyer or the
shop's dashboard would, `notification(...)` is the webhook YooKassa would send (the SDK's
notification models), and `fault` makes it answer 500 or 401, or hang past any deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from yookassa.domain.notification import PaymentWebhookNotification, RefundWebhookNotification
from yookassa.domain.request import PaymentRequest
from yookassa.domain.response import PaymentResponse, RefundResponse

from tests.support.redis_servers import free_port

SHOP_ID = "506751"
SECRET_KEY = "test_Fh8hUAVVBGUGbjmlzba6TB0iyUbos_lueTHE-axOwM0"
Fault = Literal["500", "401", "slow"] | None


def _error(status: int, code: str, description: str, **extra: str) -> JSONResponse:
    body = {"type": "error", "id": str(uuid.uuid4()), "code": code, "description": description}
    return JSONResponse({**body, **extra}, status_code=status)


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass
class StandIn:
    """The API's state and controls. `url` is what YOOKASSA_API_URL should be."""

    url: str = ""
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    created: int = 0  # payments created through POST /payments (a repeated key is not one)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fault: Fault = None
    hang_seconds: float = 30.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Forget every payment and fault (one server serves a whole test module)."""
        with self.lock:
            self.payments.clear()
            self.refunds.clear()
            self.keys.clear()
            self.requests.clear()
            self.created, self.fault, self.hang_seconds = 0, None, 30.0

    # --- the API --------------------------------------------------------------------------

    async def _gate(self, request: Request) -> JSONResponse | None:
        self.requests.append((request.method, request.url.path))
        if self.fault == "slow":
            await asyncio.sleep(self.hang_seconds)
        if self.fault == "500":
            return _error(500, "internal_server_error", "Internal server error")
        auth = request.headers.get("authorization", "")
        expected = "Basic " + base64.b64encode(f"{SHOP_ID}:{SECRET_KEY}".encode()).decode()
        if self.fault == "401" or auth != expected:
            return _error(
                401,
                "invalid_credentials",
                "Basic authentication failed: check the shop id and the secret key",
            )
        return None

    async def create_payment(self, request: Request) -> JSONResponse:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        key = request.headers.get("idempotence-key")
        if not key:
            return _error(
                400,
                "invalid_request",
                "Idempotence-Key header is missing",
                parameter="Idempotence-Key",
            )
        try:
            body = await request.json()
            PaymentRequest(body).validate()  # the SDK decides what a valid request is
        except Exception as exc:
            return _error(400, "invalid_request", f"Invalid request: {exc}")
        with self.lock:
            if key in self.keys:
                earlier, payment_id = self.keys[key]
                if earlier != body:
                    return _error(
                        400,
                        "invalid_request",
                        "Idempotence key duplicated with another request body",
                        parameter="Idempotence-Key",
                    )
                return self._payment_response(payment_id)
            payment_id = f"{uuid.uuid4()}"
            self.payments[payment_id] = {
                "id": payment_id,
                "status": "pending",
                "paid": False,
                "amount": body["amount"],
                "description": body.get("description"),
                "metadata": body.get("metadata", {}),
                "recipient": {"account_id": SHOP_ID, "gateway_id": "100700"},
                "created_at": _stamp(),
                "confirmation": {
                    "type": "redirect",
                    "return_url": body["confirmation"]["return_url"],
                    "confirmation_url": (
                        f"https://yoomoney.ru/checkout/payments/v2/contract?orderId={payment_id}"
                    ),
                },
                "test": True,
                "refundable": False,
            }
            self.keys[key] = (body, payment_id)
            self.created += 1
        return self._payment_response(payment_id)

    async def get_payment(self, request: Request) -> JSONResponse:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        payment_id = request.path_params["payment_id"]
        if payment_id not in self.payments:
            return _error(404, "not_found", "Payment doesn't exist or access denied")
        return self._payment_response(payment_id)

    async def get_refund(self, request: Request) -> JSONResponse:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        refund_id = request.path_params["refund_id"]
        if refund_id not in self.refunds:
            return _error(404, "not_found", "Refund doesn't exist or access denied")
        return JSONResponse(dict(RefundResponse(self.refunds[refund_id])))

    def _payment_response(self, payment_id: str) -> JSONResponse:
        return JSONResponse(dict(PaymentResponse(self.payments[payment_id])))

    # --- the world around it ----------------------------------------------------------------

    def add_payment(
        self, *, user_id: int | str, plan: str, value: str, status: str = "succeeded"
    ) -> str:
        """A payment made outside the service's checkout (as before this API was used)."""
        payment_id = f"{uuid.uuid4()}"
        self.payments[payment_id] = {
            "id": payment_id,
            "status": "pending",
            "paid": False,
            "amount": {"value": value, "currency": "RUB"},
            "description": f"UPAK {plan}",
            "metadata": {"user_id": str(user_id), "plan": plan},
            "recipient": {"account_id": SHOP_ID, "gateway_id": "100700"},
            "created_at": _stamp(),
            "test": True,
            "refundable": False,
        }
        if status == "succeeded":
            self.succeed(payment_id)
        return payment_id

    def succeed(self, payment_id: str) -> None:
        """The buyer paid (capture: true, so straight to succeeded)."""
        payment = self.payments[payment_id]
        amount = payment["amount"]
        payment.update(
            status="succeeded",
            paid=True,
            captured_at=_stamp(),
            refundable=True,
            income_amount=amount,
            refunded_amount={"value": "0.00", "currency": amount["currency"]},
            payment_method={"type": "bank_card", "id": payment_id, "saved": False},
        )
        payment.pop("confirmation", None)

    def cancel(self, payment_id: str) -> None:
        self.payments[payment_id].update(
            status="canceled",
            cancellation_details={"party": "yoo_money", "reason": "expired_on_confirmation"},
        )
        self.payments[payment_id].pop("confirmation", None)

    def refund(self, payment_id: str, value: str | None = None) -> str:
        payment = self.payments[payment_id]
        amount = {"value": value or payment["amount"]["value"], "currency": "RUB"}
        refund_id = f"{uuid.uuid4()}"
        self.refunds[refund_id] = {
            "id": refund_id,
            "payment_id": payment_id,
            "status": "succeeded",
            "amount": amount,
            "created_at": _stamp(),
        }
        refunded = Decimal(payment["refunded_amount"]["value"]) + Decimal(amount["value"])
        payment["refunded_amount"] = {"value": f"{refunded:.2f}", "currency": "RUB"}
        return refund_id

    def notification(self, payment_id: str, **override: Any) -> bytes:
        """The payment.<status> notification YooKassa sends now; `override` forges fields."""
        obj = {**self.payments[payment_id], **override}
        event = f"payment.{obj['status']}"
        built = PaymentWebhookNotification({"type": "notification", "event": event, "object": obj})
        return built.json().encode()

    def refund_notification(self, refund_id: str) -> bytes:
        built = RefundWebhookNotification(
            {"type": "notification", "event": "refund.succeeded", "object": self.refunds[refund_id]}
        )
        return built.json().encode()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v3/payments", self.create_payment, methods=["POST"]),
                Route("/v3/payments/{payment_id}", self.get_payment, methods=["GET"]),
                Route("/v3/refunds/{refund_id}", self.get_refund, methods=["GET"]),
            ]
        )


@contextlib.contextmanager
def yookassa_stand_in() -> Iterator[StandIn]:
    """Serve a StandIn on 127.0.0.1 in a thread of its own until the block ends."""
    stand_in = StandIn()
    port = free_port()
    config = uvicorn.Config(
        stand_in.app(),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="yookassa-stand-in", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the YooKassa stand-in did not start within 15 s")
        time.sleep(0.01)
    stand_in.url = f"http://127.0.0.1:{port}/v3"
    try:
        yield stand_in
    finally:
        stand_in.fault = None
        server.should_exit = True
        thread.join(timeout=10)


def main() -> None:
    """`python -m tests.support.yookassa_api PORT`: serve a stand-in in a process of its own
    (the bench does, so the stand-in's work does not share the measured process's GIL)."""
    import sys

    uvicorn.run(
        StandIn().app(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        lifespan="off",
        access_log=False,
    )


if __name__ == "__main__":
    main()

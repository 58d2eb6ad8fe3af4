"""Errors as RFC 9457 problem details (`application/problem+json`), never a traceback."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match

from upak.domain.db import DatabaseUnavailable
from upak.store import StoreError

log = logging.getLogger("upak.web")

PROBLEM_JSON = "application/problem+json"
# The store fails over to memory within a second; a client may retry about that soon.
STORE_RETRY_AFTER = "1"


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        # Never echo the input back: it may be a password.
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        errors.append({"field": ".".join(location) or "body", "message": error.get("msg", "")})
    return errors


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this request's path (Starlette's 405 names only
    the first route's: `DELETE /auth/sessions` and `GET /auth/sessions` are two routes)."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        if route.methods and route.matches(request.scope)[0] is not Match.NONE:
            methods.update(route.methods)
    if "GET" in methods:
        methods.add("HEAD")  # HeadAsGet answers it
    return sorted(methods)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        if any("JSON decode error" in e["message"] for e in errors):
            return problem(400, "Malformed JSON", "The request body is not valid JSON.")
        return problem(422, "Invalid request", "Some fields are missing or invalid.", errors=errors)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        title = exc.detail if isinstance(exc.detail, str) else "Error"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            allowed = ", ".join(allowed_methods(request))
            headers = {**(headers or {}), "Allow": allowed}
            return problem(405, title, f"This path answers {allowed}.", headers=headers)
        return problem(exc.status_code, title, headers=headers)

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # json.loads of a body like [[[[…]]]] (within the size limit) recurses past the limit.
        return problem(400, "Malformed JSON", "The request body is nested too deeply.")

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store error on %s %s: %s", request.method, request.url.path, exc)
        return store_problem()

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(PoolTimeout)  # every pooled connection busy past the deadline
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        # The message names the reason only (never the URL); the breaker logs the outage.
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        interval = request.app.state.services.settings.database_health_interval
        return problem(
            503,
            "Database temporarily unavailable",
            "Nothing was changed; retry shortly.",
            headers={"Retry-After": str(math.ceil(interval) + 1)},
        )


def store_problem() -> JSONResponse:
    """The answer to a StoreError (Redis refused an operation for a reason that is no outage),
    from a route or from a middleware (`upak.web.middleware.store_errors`)."""
    return problem(
        503,
        "Service temporarily unavailable",
        "Please retry shortly.",
        headers={"Retry-After": STORE_RETRY_AFTER},
    )

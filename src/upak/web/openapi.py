"""`/openapi.json` that says what the service really answers.

Route decorators declare what only that route can answer (`responses=problems({409: …})`);
what the middleware and dependencies answer on every route they wrap is added here, from
the same facts the middleware acts on, so a new route is documented right without repeating it:

* every route: 400 (an invalid Content-Length), 413 (the body limit, RequestGuard);
* rate-limited routes (all but the limiter's exempt paths): 429 with Retry-After, and the
  RateLimit / RateLimit-Policy fields on every answer; 503 when the store fails;
* POST/PUT/PATCH/DELETE: 403 from the origin check;
* routes that depend on `require_session`: 401, and the session cookie as security;
* FastAPI's 422 is replaced by the problem+json one the handler really sends;
* every GET has its HEAD twin (`HeadAsGet` answers it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel

from upak.web.dependencies import require_session
from upak.web.middleware.body_limit import DEFAULT_LIMIT
from upak.web.middleware.origin import SAFE_METHODS
from upak.web.problems import PROBLEM_JSON
from upak.web.schemas import Problem, ValidationProblem

SESSION_SCHEME = "session"
_REF = "#/components/schemas/{model}"

RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 0},
}
RATE_LIMIT_HEADERS = {
    "RateLimit": {
        "description": 'The current window (IETF draft syntax), e.g. `"default";r=119;t=60`.',
        "schema": {"type": "string"},
    },
    "RateLimit-Policy": {
        "description": 'The limits that apply, e.g. `"default";q=120;w=60`.',
        "schema": {"type": "string"},
    },
}
ETAG = {"description": "Strong validator of the body.", "schema": {"type": "string"}}

# What the middleware and dependencies answer, so route decorators need not repeat it.
_COMMON = {
    400: "Malformed request: invalid Content-Length or JSON.",
    401: "Not logged in, or the session has ended: log in again.",
    403: "Cross-origin request refused (the Origin is not in CORS_ORIGINS).",
    413: f"Request body over {DEFAULT_LIMIT} bytes.",
    429: "Too many requests: retry after Retry-After seconds.",
    503: "The service cannot reach what it needs right now: retry shortly.",
}


def problem_response(
    description: str, *, retry_after: bool = False, model: type[BaseModel] = Problem
) -> dict[str, Any]:
    """One problem+json response for a route's `responses=`."""
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": _REF.format(model=model.__name__)}}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {**RETRY_AFTER, "required": True}}
    return response


def problems(
    descriptions: Mapping[int, str], *, retry_after: Iterable[int] = ()
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the problems a route itself returns, e.g. `problems({409: "…"})`."""
    waits = set(retry_after)
    return {
        status: problem_response(text, retry_after=status in waits)
        for status, text in descriptions.items()
    }


def not_modified() -> dict[int | str, dict[str, Any]]:
    """The 304 of a cached read (`If-None-Match` matched): no body, the same ETag."""
    return {
        304: {"description": "Not modified: the ETag still matches.", "headers": {"ETag": ETAG}}
    }


# Models that only `openapi_extra` names (FastAPI does not see them): added to components.
_RAW_BODY_MODELS: dict[str, type[BaseModel]] = {}


def raw_body(
    model: type[BaseModel], description: str, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`openapi_extra=` for a route that reads its raw body itself (signatures are over the
    exact bytes), documenting `model` as the JSON body and `headers` (name: description) as
    required header parameters."""
    _RAW_BODY_MODELS[model.__name__] = model
    extra: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}
            },
        }
    }
    if headers:
        extra["parameters"] = [
            {
                "name": name,
                "in": "header",
                "required": True,
                "description": text,
                "schema": {"type": "string"},
            }
            for name, text in headers.items()
        ]
    return extra


def install_openapi(
    app: FastAPI, *, cookie_name: str, unlimited_paths: Iterable[str], rate_limited: bool
) -> None:
    """Replace `app.openapi` with the exact schema (built once, on first request)."""
    unlimited = frozenset(unlimited_paths)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(
                app,
                cookie_name=cookie_name,
                limited=(lambda path: rate_limited and path not in unlimited),
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_schema(
    app: FastAPI, *, cookie_name: str, limited: Callable[[str], bool]
) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    models: list[type[BaseModel]] = [Problem, ValidationProblem, *_RAW_BODY_MODELS.values()]
    for model in models:
        _add_model(schemas, model)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components["securitySchemes"] = {
        SESSION_SCHEME: {
            "type": "apiKey",
            "in": "cookie",
            "name": cookie_name,
            "description": "The session cookie `POST /auth/login` sets (HttpOnly).",
        }
    }
    by_operation: dict[tuple[str | None, str], Dependant] = {
        (route.path_format, method.lower()): route.dependant
        for route in iter_route_contexts(app.routes)
        if getattr(route, "include_in_schema", False) and hasattr(route, "dependant")
        for method in route.methods or ()
    }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in list(operations.items()):
            dependant = by_operation.get((path, method))
            if dependant is not None:
                _complete(operation, dependant, method.upper(), limited(path))
        if "get" in operations:
            operations["head"] = _head_of(operations["get"])
    return schema


def _add_model(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    generated = model.model_json_schema(ref_template=_REF)
    schemas.update(generated.pop("$defs", {}))
    schemas[model.__name__] = generated


def _complete(operation: dict[str, Any], dependant: Dependant, method: str, limited: bool) -> None:
    responses = operation.setdefault("responses", {})
    if "422" in responses:
        responses["422"] = problem_response(
            "Some fields are missing or invalid: `errors` names each.", model=ValidationProblem
        )
    wanted = [400, 413]
    if method not in SAFE_METHODS:
        wanted.append(403)
    if _needs_session(dependant):
        wanted.append(401)
        operation["security"] = [{SESSION_SCHEME: []}]
    if limited:
        wanted += [429, 503]
    for status in wanted:
        responses.setdefault(
            str(status), problem_response(_COMMON[status], retry_after=status in (429, 503))
        )
    if not limited:
        return
    for status, response in responses.items():
        headers = response.setdefault("headers", {})
        for name, header in RATE_LIMIT_HEADERS.items():
            headers.setdefault(name, {**header, "required": status == "429"})


def _needs_session(dependant: Dependant) -> bool:
    return any(d.call is require_session or _needs_session(d) for d in dependant.dependencies)


def _head_of(get: dict[str, Any]) -> dict[str, Any]:
    """The GET's operation without bodies: HEAD answers the same status and headers."""
    head = {k: v for k, v in get.items() if k not in ("responses", "operationId")}
    head["operationId"] = f"head_{get.get('operationId', 'operation')}"
    head["summary"] = f"{get.get('summary', '')} (headers only)".strip()
    head["responses"] = {
        status: {k: v for k, v in response.items() if k != "content"}
        for status, response in get["responses"].items()
    }
    return head

"""`/openapi.json` says what the service answers, HEAD and Allow are right, `/docs` is offline.

The fuzzing against the schema is in test_openapi_fuzz.py (slow); these are the quick checks
of what the issue named, each against the real app.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI

from tests.web.test_auth import Build, build, client_of, clock

__all__ = ["build", "clock"]  # fixtures shared with the auth tests


@pytest.fixture
async def app(build: Build) -> FastAPI:
    return await build()


async def _schema(app: FastAPI) -> dict[str, Any]:
    async with client_of(app) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


async def test_every_status_has_its_body_and_headers(app: FastAPI) -> None:
    schema = await _schema(app)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            where = f"{method.upper()} {path}"
            assert {"400", "413"} <= responses.keys(), where
            if path != "/health":
                assert {"429", "503"} <= responses.keys(), where
                assert responses["429"]["headers"]["Retry-After"]["required"] is True
                assert responses["429"]["headers"]["RateLimit"]["required"] is True
                assert "RateLimit-Policy" in responses["429"]["headers"], where
            if method in ("post", "delete"):
                assert "403" in responses, where
            for status, response in responses.items():
                if status.startswith(("4", "5")) and method != "head":
                    (media,) = response["content"]
                    assert media == "application/problem+json", (where, status)
                if status.startswith("2") and status != "204" and method != "head":
                    assert response["content"]["application/json"]["schema"], (where, status)


async def test_422_is_the_real_problem_shape(app: FastAPI) -> None:
    schema = await _schema(app)
    documented = schema["paths"]["/auth/register"]["post"]["responses"]["422"]
    ref = documented["content"]["application/problem+json"]["schema"]["$ref"]
    model = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert model["properties"]["detail"]["type"] == "string"
    assert model["properties"]["errors"]["type"] == "array"
    assert {"detail", "errors", "title", "status"} <= set(model["required"])
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    async with client_of(app) as client:
        real = await client.post("/auth/register", json={"email": "a@upak.ru", "password": "x"})
    assert real.status_code == 422
    assert real.headers["content-type"] == "application/problem+json"
    assert isinstance(real.json()["detail"], str) and real.json()["errors"][0]["field"]


async def test_cookie_security_emails_and_304s(app: FastAPI) -> None:
    schema = await _schema(app)
    components = schema["components"]
    assert components["securitySchemes"]["session"] == {
        "type": "apiKey",
        "in": "cookie",
        "name": "upak_session",
        "description": components["securitySchemes"]["session"]["description"],
    }
    paths = schema["paths"]
    for secured in (("/me", "get"), ("/auth/sessions", "get"), ("/payments", "get")):
        operation = paths[secured[0]][secured[1]]
        assert operation["security"] == [{"session": []}] and "401" in operation["responses"]
    assert "security" not in paths["/plans"]["get"] and "security" not in paths["/health"]["get"]
    for model in ("Registration", "Credentials", "Account", "Me"):
        assert components["schemas"][model]["properties"]["email"]["format"] == "email", model
    for cached in ("/plans", "/me"):
        assert "ETag" in paths[cached]["get"]["responses"]["304"]["headers"]


async def test_webhooks_document_body_and_signature_headers(app: FastAPI) -> None:
    schema = await _schema(app)
    signed = schema["paths"]["/webhooks/upak"]["post"]
    headers = {p["name"] for p in signed["parameters"] if p["in"] == "header" and p["required"]}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    for path in ("/webhooks/upak", "/webhooks/yookassa"):
        operation = schema["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/YooKassaNotification"}
        assert operation["responses"]["409"]["headers"]["Retry-After"]["required"] is True
        result = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert result == {"$ref": "#/components/schemas/WebhookResult"}
    components = schema["components"]["schemas"]
    metadata = components["NotificationMetadata"]["properties"]
    assert {"user_id", "plan"} <= metadata.keys()
    assert components["YooKassaNotification"]["properties"]["object"] == {
        "$ref": "#/components/schemas/NotificationObject"
    }


async def test_head_answers_every_get_without_a_body(app: FastAPI) -> None:
    schema = await _schema(app)
    gets = [p for p, ops in schema["paths"].items() if "get" in ops and "{" not in p]
    assert {"/plans", "/me", "/health", "/auth/sessions", "/payments"} <= set(gets)
    async with client_of(app) as client:
        for path in [*gets, "/openapi.json", "/docs"]:
            got, head = await client.get(path), await client.head(path)
            assert head.status_code == got.status_code != 405, path
            assert head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
            if "etag" in got.headers:
                assert head.headers["etag"] == got.headers["etag"], path
        assert "head" in schema["paths"]["/plans"]


async def test_405_allows_the_methods_of_every_route_on_the_path(app: FastAPI) -> None:
    schema = await _schema(app)
    async with client_of(app) as client:
        for path, operations in schema["paths"].items():
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            response = await client.request("PATCH", concrete)
            assert response.status_code == 405, path
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert allowed == {m.upper() for m in operations}, path
            assert response.headers["content-type"] == "application/problem+json"
        options = await client.options("/auth/sessions")
    assert options.status_code == 405
    assert options.headers["allow"] == "DELETE, GET, HEAD"


async def test_docs_page_loads_nothing_from_outside(app: FastAPI) -> None:
    async with client_of(app) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
        assert urls and all(u.startswith("/") for u in urls), urls
        assert "http://" not in page.text and "https://" not in page.text
        for url in urls:
            asset = await client.get(url)
            assert asset.status_code == 200 and asset.content, url


async def test_openapi_is_exact_in_production_too(build: Build) -> None:
    app = await build(upak_env="production")
    schema = await _schema(app)
    assert schema["components"]["securitySchemes"]["session"]["name"] == "__Host-upak_session"

"""A real browser: headless Chromium (Debian's, through Playwright's `executable_path`).

* a page on an allowed origin (CORS_ORIGINS) logs in with `fetch(…, {credentials:
  "include"})`, reads /me with the cookie the browser kept, and logs out;
* a page on another origin is refused: the login never happens, the response is unreadable;
* in production over HTTPS (a certificate the test makes), the `__Host-` cookie is set with
  Secure and sent back.

The pages and the API are all on `localhost` (other ports are other origins, the same site),
so the SameSite=Lax cookie goes with cross-origin fetches exactly as for a front end on a
sibling port; the refused page differs only in its origin.
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer, free_port, make_tls_files
from tests.support.service import served_in_thread
from upak.domain.passwords import fast_passwords_for_tests
from upak.web.app import create_app

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EMAIL, PASSWORD = "browser@upak.ru", "correct horse battery"
# Bounded: every browser step has a deadline (a hung page fails, it does not hang the suite).
STEP_MS = 20_000

# Run in the page: each [method, path, body] in turn, with the cookies the browser keeps.
# Every result is returned, so a failure says which step broke (a refused fetch is a
# TypeError, with no status at all).
FETCHES = """async ([api, steps]) => {
  const results = [];
  for (const [method, path, body] of steps) {
    try {
      const response = await fetch(api + path, {
        method, credentials: "include",
        headers: body ? {"Content-Type": "application/json"} : {},
        body: body ? JSON.stringify(body) : undefined,
      });
      results.push({status: response.status, body: await response.text()});
    } catch (error) {
      results.push({error: String(error)});
    }
  }
  return results;
}"""
LOGIN = ["POST", "/auth/login", {"email": EMAIL, "password": PASSWORD}]
ME = ["GET", "/me", None]
LOGOUT = ["POST", "/auth/logout", None]


def _front_end() -> Starlette:
    async def page(request: Any) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>front end</title><p>UPAK front end</p>")

    return Starlette(routes=[Route("/", page)])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


def _register(api: str, **kwargs: Any) -> None:
    response = httpx.post(
        api + "/auth/register", json={"email": EMAIL, "password": PASSWORD}, **kwargs
    )
    assert response.status_code == 201, response.text


def _api(redis: RedisServer, key_prefix: str, **settings: Any) -> Any:
    return create_app(
        make_settings(redis_url=redis.url, redis_key_prefix=key_prefix, **settings),
        passwords=fast_passwords_for_tests(),
    )


def test_allowed_origin_logs_in_reads_me_and_logs_out_refused_origin_cannot(
    browser: Any, shared_redis: RedisServer, key_prefix: str
) -> None:
    allowed_port, refused_port = free_port(), free_port()
    allowed, refused = f"http://localhost:{allowed_port}", f"http://localhost:{refused_port}"
    api_app = _api(shared_redis, key_prefix, cors_origins=allowed)
    with (
        served_in_thread(api_app) as api_url,
        served_in_thread(_front_end(), port=allowed_port),
        served_in_thread(_front_end(), port=refused_port),
    ):
        api = api_url.replace("127.0.0.1", "localhost")
        _register(api)
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(STEP_MS)
            page.goto(allowed + "/")
            login, me, logout, after = page.evaluate(FETCHES, [api, [LOGIN, ME, LOGOUT, ME]])
            assert login.get("status") == 200, login
            assert me.get("status") == 200 and EMAIL in me["body"], me
            assert logout.get("status") == 204, logout
            assert after.get("status") == 401, after  # the cookie was cleared and the session ended
            assert not [c for c in context.cookies() if c["name"] == "upak_session"]

            page.goto(refused + "/")
            login, me = page.evaluate(FETCHES, [api, [LOGIN, ME]])
            # The origin check answers 403 without CORS headers: the page cannot even read it.
            assert "error" in login and "error" in me, (login, me)
            assert not [c for c in context.cookies() if c["name"] == "upak_session"]
        finally:
            context.close()
        # Refused by the server, not only unreadable: that login made no session.
        with httpx.Client(base_url=api, timeout=10) as client:
            assert client.post("/auth/login", json=LOGIN[2]).status_code == 200
            sessions = client.get("/auth/sessions").json()
        assert [s["current"] for s in sessions] == [True], sessions


def test_production_over_https_sets_and_sends_the_host_cookie(
    browser: Any, shared_redis: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    tls = make_tls_files(tmp_path / "tls")  # a throwaway CA and a localhost certificate
    api_app = _api(shared_redis, key_prefix, upak_env="production")
    with served_in_thread(
        api_app, ssl_certfile=tls["cert"], ssl_keyfile=tls["key"], host="localhost"
    ) as api:
        assert api.startswith("https://localhost:")
        _register(api, verify=ssl.create_default_context(cafile=tls["ca"]))
        # The test's CA is not one Chromium trusts; the connection is still TLS (a secure
        # context), which is what Secure and __Host- need.
        context = browser.new_context(ignore_https_errors=True)
        try:
            page = context.new_page()
            page.set_default_timeout(STEP_MS)
            page.goto(api + "/docs")  # a page of the API's own origin
            (login,) = page.evaluate(FETCHES, [api, [LOGIN]])
            assert login.get("status") == 200, login
            (cookie,) = [c for c in context.cookies() if c["name"] == "__Host-upak_session"]
            assert cookie["secure"] and cookie["httpOnly"] and cookie["path"] == "/"
            assert cookie["domain"] == "localhost" and cookie["sameSite"] == "Lax"
            (me,) = page.evaluate(FETCHES, [api, [ME]])
            assert me.get("status") == 200 and EMAIL in me["body"], me  # the browser sent it back
        finally:
            context.close()

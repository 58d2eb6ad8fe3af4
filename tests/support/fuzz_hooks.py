"""Schemathesis hooks for `tests/web/test_openapi_fuzz.py` (loaded via SCHEMATHESIS_HOOKS).

* Emails: the schema says `format: email`; the server also refuses special-use domains
  (`.test`, `.local`, …, RFC 6761) that the format allows, as its field description says.
  Generated addresses use ordinary domains, so "valid data is accepted" is checked for real.
* Logged in: when UPAK_FUZZ_URL / UPAK_FUZZ_EMAIL / UPAK_FUZZ_PASSWORD are set, every case
  carries a session cookie from a real login; a 401 (a case that logged out or revoked the
  session) makes schemathesis log in again.
"""

from __future__ import annotations

import os

import httpx
import schemathesis
from hypothesis import strategies as st

schemathesis.openapi.format(
    "email",
    st.from_regex(r"[a-z0-9]{1,16}(\.[a-z0-9]{1,8})?@[a-z0-9]{2,12}\.(ru|com|org)", fullmatch=True),
)

if os.environ.get("UPAK_FUZZ_EMAIL"):

    @schemathesis.auth(refresh_interval=600)
    class SessionCookie:
        def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
            response = httpx.post(
                os.environ["UPAK_FUZZ_URL"] + "/auth/login",
                json={
                    "email": os.environ["UPAK_FUZZ_EMAIL"],
                    "password": os.environ["UPAK_FUZZ_PASSWORD"],
                },
                timeout=10,
            )
            response.raise_for_status()
            return response.cookies["upak_session"]

        def set(
            self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext
        ) -> None:
            case.cookies = {**(case.cookies or {}), "upak_session": data}

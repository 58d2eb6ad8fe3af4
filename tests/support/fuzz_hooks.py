"""Schemathesis hooks for `tests/web/test_openapi_fuzz.py` (loaded via SCHEMATHESIS_HOOKS).

* Emails: the schema says `format: email`; the server also refuses special-use domains
  (`.test`, `.local`, …, RFC 6761) that the format allows, as its field description says.
  Generated addresses use ordinary domains, so "valid data is accepted" is checked for real.
* New passwords: the schema says `format: password` and 15 characters or more; the server
  also refuses common passwords (the field description says so), which hypothesis's favourite
  strings ("000000000000000") are. Generated ones pass `is_common`, checked by the app's own
  function, so "valid data is accepted" is checked for real.
* Idempotency-Key: a valid key is made fresh for every case. The fuzzer reuses values, and a
  key reused with another body is refused (422) by design, which is no schema violation.
* Logged in: when UPAK_FUZZ_URL / UPAK_FUZZ_EMAIL / UPAK_FUZZ_PASSWORD are set, every case
  carries a session cookie from a real login; a 401 (a case that logged out or revoked the
  session) makes schemathesis log in again.
"""

from __future__ import annotations

import os
import re
import uuid

import httpx
import schemathesis
from hypothesis import strategies as st

from upak.domain.passwords import is_common

schemathesis.openapi.format(
    "email",
    st.from_regex(r"[a-z0-9]{1,16}(\.[a-z0-9]{1,8})?@[a-z0-9]{2,12}\.(ru|com|org)", fullmatch=True),
)

schemathesis.openapi.format(
    "password",
    st.text(
        alphabet="abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY34679 -_", min_size=15, max_size=40
    ).filter(lambda password: password.strip() == password and not is_common(password)),
)

_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")


@schemathesis.hook
def before_call(
    context: schemathesis.HookContext, case: schemathesis.Case, **kwargs: object
) -> None:
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and _IDEMPOTENCY_KEY.fullmatch(key):
        case.headers = {**case.headers, "Idempotency-Key": str(uuid.uuid4())}


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

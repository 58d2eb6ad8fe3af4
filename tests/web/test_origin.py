"""The CSRF Origin check compares the whole origin: scheme, host and port."""

from __future__ import annotations

import pytest

from upak.web.middleware.origin import OriginCheck


async def _app(scope, receive, send) -> None:  # never called: `allows` is asked directly
    raise AssertionError


def _scope(origin: str, host: str = "api.upak.example", scheme: str = "http") -> dict:
    headers = [(b"host", host.encode()), (b"origin", origin.encode())]
    return {"type": "http", "method": "POST", "scheme": scheme, "headers": headers}


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("http://api.upak.example", "api.upak.example", "http", True),
        ("http://api.upak.example:80", "api.upak.example", "http", True),
        ("https://api.upak.example", "api.upak.example:443", "https", True),
        ("http://api.upak.example:8000", "api.upak.example:8000", "http", True),
        # The finding: an http server took `Origin: https://host` as its own.
        ("https://api.upak.example", "api.upak.example", "http", False),
        ("http://api.upak.example", "api.upak.example", "https", False),
        ("https://api.upak.example:8443", "api.upak.example:8000", "https", False),
        ("http://api.upak.example:8000", "api.upak.example", "http", False),
        ("http://evil.example", "api.upak.example", "http", False),
    ],
)
def test_own_origin_needs_the_same_scheme_host_and_port(
    origin: str, host: str, scheme: str, allowed: bool
) -> None:
    check = OriginCheck(_app)
    assert check.allows(_scope(origin, host, scheme)) is allowed


def test_listed_origins_are_exact_too() -> None:
    check = OriginCheck(_app, allowed_origins=["https://app.upak.example"])
    assert check.allows(_scope("https://app.upak.example"))
    assert not check.allows(_scope("http://app.upak.example"))
    assert not check.allows(_scope("https://app.upak.example:8443"))

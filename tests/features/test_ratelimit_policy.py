"""Policy strings: what RATE_LIMIT_* accept, and the one-line error for what they do not."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from upak.config import ConfigError
from upak.features.ratelimit import named_limits
from upak.ratelimit_policy import Limit, parse_policy


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("120/minute", (Limit(120, 60_000),)),
        ("5/second", (Limit(5, 1000),)),
        ("1000/1h", (Limit(1000, 3_600_000),)),
        ("10/30s", (Limit(10, 30_000),)),
        ("7/day", (Limit(7, 86_400_000),)),
        (" 10 / 2 minutes ; 100/hour ", (Limit(10, 120_000), Limit(100, 3_600_000))),
        ("100/minute:gcra", (Limit(100, 60_000, "gcra"),)),
        ("20/10S", (Limit(20, 10_000),)),
    ],
)
def test_accepted(text: str, expected: tuple[Limit, ...]) -> None:
    assert parse_policy(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ";",
        "minute",
        "5",
        "5/",
        "/minute",
        "5/fortnight",
        "0/minute",
        "5/0s",
        "-1/minute",
        "5/minute:leaky",
        "5/500ms",
        "1/400d",
        "5/minute;5/minute",
        "5 per minute",
        "1e3/minute",
    ],
)
def test_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_policy(text)


def test_limits_print_back_in_the_syntax() -> None:
    assert [str(x) for x in parse_policy("10/30s;1000/1h;5/minute:gcra")] == [
        "10/30s",
        "1000/1h",
        "5/1m:gcra",
    ]


def test_header_names_and_keys_are_distinct_for_several_limits() -> None:
    limits = named_limits("default", "10/second;100/minute;200/minute")
    assert [x.name for x in limits] == ["default-1s", "default-1m", "default-1m-200"]
    assert len({x.key_suffix for x in limits}) == 3
    assert named_limits("login", "5/minute")[0].policy_item == '"login";q=5;w=60'


@pytest.mark.parametrize(
    "variable",
    ["RATE_LIMIT_DEFAULT", "RATE_LIMIT_LOGIN", "RATE_LIMIT_LOGIN_IP", "RATE_LIMIT_WEBHOOKS"],
)
def test_a_malformed_policy_stops_start_up_with_one_line(variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(**{variable.lower(): "5/fortnight"})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{variable} is invalid ('fortnight' is not a time unit)")
    assert "N/period" in message and "10/30s" in message

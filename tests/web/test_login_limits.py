"""Login limits that cannot be turned into a lockout (issue 13, findings 2, 3 and 7): failures
only, per (email, client network); a per-email ceiling that slows and never refuses; IPv6
clients keyed by network; a failure limit on password changes."""

from __future__ import annotations

import ipaddress
import time

import httpx
import pytest

from tests.web.test_ratelimit import PASSWORD, client_for  # noqa: F401 (the fixture)
from upak.features.ratelimit import client_network

PROXY = {"trusted_proxies": "127.0.0.0/8"}  # the test client's peer; X-Forwarded-For picks


def via(address: str) -> dict[str, str]:
    return {"x-forwarded-for": address}


async def login(client: httpx.AsyncClient, email: str, password: str, address: str) -> int:
    response = await client.post(
        "/auth/login", json={"email": email, "password": password}, headers=via(address)
    )
    return response.status_code


async def test_a_strangers_failures_never_lock_the_owner_out(client_for):  # noqa: F811
    client = await client_for(rate_limit_login="5/minute", **PROXY)
    owner, stranger = "198.51.100.10", "203.0.113.66"
    registered = await client.post(
        "/auth/register", json={"email": "victim@example.com", "password": PASSWORD}
    )
    assert registered.status_code == 201
    failures = [
        await login(client, "victim@example.com", "wrong guess", stranger) for _ in range(6)
    ]
    assert failures == [401] * 5 + [429]
    # The owner, from their own network, logs in at once, again and again: successes
    # are not counted, and the stranger's failures count against the stranger's network.
    for _ in range(8):
        assert await login(client, "Victim@Example.com", PASSWORD, owner) == 200
        client.cookies.clear()


async def test_only_failures_count(client_for):  # noqa: F811
    client = await client_for(rate_limit_login="2/minute", **PROXY)
    await client.post("/auth/register", json={"email": "ok@example.com", "password": PASSWORD})
    for _ in range(6):
        assert await login(client, "ok@example.com", PASSWORD, "198.51.100.1") == 200
        client.cookies.clear()
    assert await login(client, "ok@example.com", "wrong", "198.51.100.1") == 401
    assert await login(client, "ok@example.com", "wrong", "198.51.100.1") == 401
    assert await login(client, "ok@example.com", PASSWORD, "198.51.100.1") == 429


async def test_the_per_email_ceiling_slows_and_never_refuses(client_for):  # noqa: F811
    client = await client_for(
        rate_limit_login="5/minute",
        rate_limit_login_slowdown="3/minute",
        login_slowdown_seconds=0.4,
        **PROXY,
    )
    await client.post("/auth/register", json={"email": "slow@example.com", "password": PASSWORD})
    started = time.monotonic()
    assert await login(client, "slow@example.com", PASSWORD, "198.51.100.2") == 200
    assert time.monotonic() - started < 0.4  # under the ceiling: no delay
    client.cookies.clear()
    # A botnet: one failure from each of many networks, none near its own limit.
    for n in range(4):
        assert await login(client, "slow@example.com", "wrong", f"203.0.113.{n}") == 401
    started = time.monotonic()
    assert await login(client, "slow@example.com", PASSWORD, "198.51.100.2") == 200
    assert time.monotonic() - started >= 0.4  # slowed, but the right password still works


async def test_ipv6_clients_are_keyed_by_their_64(client_for):  # noqa: F811
    client = await client_for(rate_limit_default="10/minute", **PROXY)
    # The finding: 30 addresses of one /64 got 30 admissions under a 10/minute limit.
    statuses = [
        (await client.get("/items", headers=via(f"2001:db8:1:2::{n:x}"))).status_code
        for n in range(1, 31)
    ]
    assert statuses.count(200) == 10 and statuses.count(429) == 20
    assert (await client.get("/items", headers=via("2001:db8:1:3::1"))).status_code == 200


async def test_the_ipv6_prefix_is_a_setting(client_for):  # noqa: F811
    client = await client_for(rate_limit_default="1/minute", rate_limit_ipv6_prefix=48, **PROXY)
    assert (await client.get("/items", headers=via("2001:db8:1:2::1"))).status_code == 200
    assert (await client.get("/items", headers=via("2001:db8:1:ffff::1"))).status_code == 429


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped counts as IPv4
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("not an address", "unknown"),
        (None, "unknown"),
    ],
)
def test_client_network(address, key) -> None:
    assert client_network(address) == key
    if address and address != "not an address":
        assert client_network(ipaddress.ip_address(address)) == key


async def test_password_changes_have_a_failure_limit(client_for):  # noqa: F811
    client = await client_for(rate_limit_login="3/minute")
    await client.post("/auth/register", json={"email": "pw@example.com", "password": PASSWORD})
    logged_in = await client.post(
        "/auth/login", json={"email": "pw@example.com", "password": PASSWORD}
    )
    assert logged_in.status_code == 200
    change = {"current_password": "a wrong guess", "new_password": "a brand new phrase 9"}
    statuses = [(await client.post("/auth/password", json=change)).status_code for _ in range(4)]
    assert statuses == [403, 403, 403, 429]
    right = {"current_password": PASSWORD, "new_password": "a brand new phrase 9"}
    assert (await client.post("/auth/password", json=right)).status_code == 429

"""Settings: the seed's names and defaults, URL schemes, one-line errors, no leaked secrets."""

from __future__ import annotations

import pytest

from upak.config import ConfigError, Settings, load_settings, parse_redis_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD",
                 "REDIS_USERNAME", "REDIS_TTL", "REDIS_KEY_PREFIX", "UPAK_ENV"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_seed_defaults() -> None:
    settings = load_settings(env_file=None)
    assert (settings.redis_host, settings.redis_port, settings.redis_db) == ("localhost", 6379, 0)
    assert settings.redis_ttl == 300 and settings.redis_key_prefix == "upak:"
    assert settings.upak_env == "development"
    assert settings.redis.redacted_url() == "redis://localhost:6379/0"


def test_parts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "cache.internal")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_DB", "2")
    monkeypatch.setenv("REDIS_PASSWORD", "pa:ss@word")
    target = load_settings(env_file=None).redis
    assert target.hosts == (("cache.internal", 6380),) and target.db == 2
    assert target.password == "pa:ss@word"
    assert target.redacted_url() == "redis://:***@cache.internal:6380/2"


def test_url_wins_over_the_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "ignored")
    monkeypatch.setenv("REDIS_URL", "redis://:your_password@localhost:6379/0")
    target = load_settings(env_file=None).redis
    assert target.hosts == (("localhost", 6379),) and target.password == "your_password"


def test_dotenv_file_is_read(tmp_path) -> None:
    env = tmp_path / ".env"
    env.write_text("REDIS_HOST=from-dotenv\nREDIS_TTL=600\n")
    settings = load_settings(env_file=str(env))
    assert settings.redis_host == "from-dotenv" and settings.redis_ttl == 600


@pytest.mark.parametrize(
    ("url", "kind", "hosts", "db", "extra"),
    [
        ("redis://localhost", "standalone", (("localhost", 6379),), 0, {}),
        ("rediss://u:p@h:6380/3", "standalone", (("h", 6380),), 3, {"tls": True, "username": "u"}),
        ("unix:///run/redis.sock?db=4", "unix", (), 4, {"path": "/run/redis.sock"}),
        (
            "redis+sentinel://s1:26379,s2/mymaster/1",
            "sentinel",
            (("s1", 26379), ("s2", 26379)),
            1,
            {"service_name": "mymaster"},
        ),
        ("redis+cluster://n1:7000,[::1]:7001", "cluster", (("n1", 7000), ("::1", 7001)), 0, {}),
    ],
)
def test_url_schemes(url, kind, hosts, db, extra) -> None:
    target = parse_redis_url(url)
    assert (target.kind, target.hosts, target.db) == (kind, hosts, db)
    for name, value in extra.items():
        assert getattr(target, name) == value
    assert parse_redis_url(target.redacted_url()).kind == kind  # redacted URLs still parse


@pytest.mark.parametrize(
    ("env", "names", "accepts"),
    [
        ({"REDIS_PORT": "abc"}, "REDIS_PORT", "1 to 65535"),
        ({"REDIS_PORT": "70000"}, "REDIS_PORT", "1 to 65535"),
        ({"REDIS_TTL": "-1"}, "REDIS_TTL", "at least 1"),
        ({"REDIS_DB": "16"}, "REDIS_DB", "0 to 15"),
        ({"REDIS_URL": "http://:topsecret@h:1/0"}, "REDIS_URL", "redis://"),
        ({"REDIS_URL": "redis://:topsecret@h:99999/0"}, "REDIS_URL", "redis://"),
        ({"REDIS_URL": "redis+cluster://h:7000/2"}, "REDIS_URL", "database 0"),
        ({"UPAK_ENV": "staging"}, "UPAK_ENV", "development or production"),
        ({"REDIS_KEY_PREFIX": "a{b}"}, "REDIS_KEY_PREFIX", "braces"),
        ({"TRUSTED_PROXIES": "10.0.0.0/8,nope"}, "TRUSTED_PROXIES", "CIDR"),
    ],
)
def test_bad_values_stop_start_up_with_one_line(monkeypatch, env, names, accepts) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert "\n" not in message and names in message and accepts in message
    assert "topsecret" not in message


def test_secrets_stay_out_of_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://app:topsecret@h:6379/0")
    monkeypatch.setenv("REDIS_PASSWORD", "othersecret")
    settings = load_settings(env_file=None)
    for text in (repr(settings), str(settings), repr(settings.redis), str(settings.redis)):
        assert "topsecret" not in text and "othersecret" not in text


def test_settings_are_data_not_globals() -> None:
    a = load_settings(env_file=None, redis_port=7001)
    b = load_settings(env_file=None, redis_port=7002)
    assert isinstance(a, Settings) and a.redis.hosts != b.redis.hosts


def test_a_short_webhook_secret_refuses_start_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    from typer.testing import CliRunner

    from upak.cli import app

    one_byte = "whsec_" + base64.b64encode(b"x").decode()
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None, webhook_secret=one_byte)
    message = str(caught.value)
    assert message.startswith("WEBHOOK_SECRET is invalid") and "24" in message
    assert "\n" not in message and one_byte not in message
    # 23 bytes is still too short; 24 (Standard Webhooks' minimum) starts.
    with pytest.raises(ConfigError):
        load_settings(env_file=None, webhook_secret="whsec_" + base64.b64encode(b"k" * 23).decode())
    load_settings(env_file=None, webhook_secret="whsec_" + base64.b64encode(b"k" * 24).decode())

    monkeypatch.setenv("WEBHOOK_SECRET", one_byte)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "WEBHOOK_SECRET" in result.stderr and "Traceback" not in result.output


def test_lists_and_policies_are_parsed_once_into_typed_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ipaddress

    from upak.ratelimit_policy import Limit

    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.1/8, ::1")  # host bits set: the network
    monkeypatch.setenv("YOOKASSA_ALLOWED_IPS", "127.0.0.1")
    monkeypatch.setenv("RATE_LIMIT_LOGIN", "3/minute;100/1h:gcra")
    settings = load_settings(env_file=None)
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert settings.yookassa_allowed_ips == (ipaddress.ip_network("127.0.0.1/32"),)
    assert settings.rate_limit_login == (Limit(3, 60_000), Limit(100, 3_600_000, "gcra"))
    assert settings.rate_limit_default == (Limit(120, 60_000),)  # the default, parsed too
    # Blank YOOKASSA_ALLOWED_IPS means "not set" (YooKassa's own list), as before.
    monkeypatch.setenv("YOOKASSA_ALLOWED_IPS", "")
    assert load_settings(env_file=None).yookassa_allowed_ips is None
    # Parsed values given directly (as a test or a caller holding them) pass as they are.
    again = load_settings(env_file=None, trusted_proxies=settings.trusted_proxies)
    assert again.trusted_proxies == settings.trusted_proxies


@pytest.mark.parametrize("name", ["RATE_LIMIT_DEFAULT", "RATE_LIMIT_WEBHOOKS"])
def test_a_bad_policy_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "5/fortnight")
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert message.startswith(f"{name} is invalid") and "fortnight" in message
    assert "\n" not in message and "N/period" in message

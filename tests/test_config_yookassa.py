"""YooKassa's API settings: defaults, one-line errors, a secret key that never shows."""

from __future__ import annotations

import pytest

from upak.config import ConfigError, load_settings
from upak.domain.yookassa_api import api_from_settings

KEY = "test_SuperSecretShopKey_0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("YOOKASSA_API_URL", "YOOKASSA_SHOP_ID", "YOOKASSA_SECRET_KEY", "YOOKASSA_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_development_without_a_shop() -> None:
    settings = load_settings(env_file=None)
    assert settings.yookassa_api_url == "https://api.yookassa.ru/v3"
    assert settings.yookassa_timeout == 5.0
    assert not settings.yookassa_configured and api_from_settings(settings) is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"YOOKASSA_API_URL": "api.yookassa.ru/v3"}, "YOOKASSA_API_URL is invalid"),
        ({"YOOKASSA_SHOP_ID": "shop 1", "YOOKASSA_SECRET_KEY": KEY}, "YOOKASSA_SHOP_ID"),
        ({"YOOKASSA_TIMEOUT": "0"}, "YOOKASSA_TIMEOUT is invalid"),
        ({"YOOKASSA_TIMEOUT": "300"}, "at most 30"),
        ({"YOOKASSA_SHOP_ID": "506751"}, "set both, or neither"),
        ({"YOOKASSA_SECRET_KEY": KEY}, "set both, or neither"),
    ],
)
def test_bad_values_are_one_line_without_the_key(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert says in message and "\n" not in message and KEY not in message


def test_the_secret_key_stays_out_of_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOOKASSA_SHOP_ID", "506751")
    monkeypatch.setenv("YOOKASSA_SECRET_KEY", KEY)
    settings = load_settings(env_file=None)
    api = api_from_settings(settings)
    assert api is not None and settings.yookassa_configured
    for text in (repr(settings), str(settings), repr(api), str(settings.model_dump())):
        assert KEY not in text

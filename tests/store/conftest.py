"""Every script the store tests run is held to its declared keys (tests/store/key_guard.py)."""

from __future__ import annotations

import pytest

from tests.store.key_guard import guard_scripts


@pytest.fixture(autouse=True)
def _key_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_scripts(monkeypatch)

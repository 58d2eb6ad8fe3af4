"""FastAPI's native telemetry is asked once at start-up, not on every request
(`upak.web.telemetry`), and stays on when OpenTelemetry has a provider configured."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from opentelemetry import trace

from tests.web.test_auth import Build, build, client_of, clock
from upak.web.telemetry import settle_native_telemetry

__all__ = ["build", "clock"]  # fixtures shared with the auth tests


async def test_requests_do_not_ask_opentelemetry_when_nothing_was_configured(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await build()  # its lifespan has run
    asked = []
    real = trace.get_tracer_provider

    def counting() -> Any:
        asked.append(1)
        return real()

    monkeypatch.setattr(trace, "get_tracer_provider", counting)
    async with client_of(app) as client:
        for _ in range(3):
            assert (await client.get("/plans")).status_code == 200
    assert asked == []


def test_a_configured_provider_keeps_fastapis_telemetry_on() -> None:
    # A provider handed to FastAPI is "configured" without touching OpenTelemetry's globals.
    app = FastAPI(telemetry={"tracer_provider": trace.NoOpTracerProvider()})
    assert settle_native_telemetry(app) is True
    assert settle_native_telemetry(FastAPI()) is False

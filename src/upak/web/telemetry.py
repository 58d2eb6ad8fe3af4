"""FastAPI's native OpenTelemetry: asked once, at start-up, whether anything listens.

FastAPI (0.16x) asks OpenTelemetry on every request whether a tracer, meter or logger
provider has been configured, and OpenTelemetry's getters read the environment each time:
about 29k instructions a request (callgrind, 4% of a cached `GET /plans`) in a service that
exports Prometheus metrics itself and configures no OpenTelemetry. Providers are configured
before the first request: by `opentelemetry-instrument` at interpreter start, or by FastAPI's
own auto-configuration (FASTAPI_OTEL_AUTO_CONFIGURE), which runs before the app's lifespan.
So the answer at start-up is the answer for the process: with a provider, FastAPI's
telemetry stays as it is; without one, it is switched off instead of asked again per request.
"""

from __future__ import annotations

from fastapi import FastAPI


def settle_native_telemetry(app: FastAPI) -> bool:
    """Call from the lifespan, at start-up. Whether FastAPI's telemetry stays on."""
    # Private to FastAPI (pinned by uv.lock); tests/web/test_telemetry.py notices a change.
    telemetry = app._native_telemetry
    if telemetry.enabled():
        return True
    for signal in ("tracing", "metrics", "logs"):  # a TypedDict: set key by key
        telemetry.config[signal] = False
    return False

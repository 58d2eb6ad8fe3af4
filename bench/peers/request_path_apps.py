"""The servers bench/request_path.py compares: the full UPAK app, and bare FastAPI answering
the same JSON on the same paths.

`uvicorn bench.peers.request_path_apps:ours --factory` (or `bare`):
  ours  the app `upak serve` runs (rate limiter, sessions, cache, every middleware on);
  bare  FastAPI with GET /plans and GET /me returning the bytes ours answered, read from
        BARE_PLANS_JSON and BARE_ME_JSON: no middleware, no store, no session check.
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI
from fastapi.responses import Response

from upak.config import load_settings
from upak.web.app import create_app


def ours() -> FastAPI:
    # As `upak serve` builds it (the start-up heap frozen).
    return create_app(load_settings(env_file=None), freeze_startup_heap=True)


def bare() -> FastAPI:
    plans = os.environ["BARE_PLANS_JSON"].encode()
    me = os.environ["BARE_ME_JSON"].encode()
    for body in (plans, me):
        json.loads(body)  # fail loudly on a bad fixture rather than serve garbage
    app = FastAPI()

    @app.get("/plans")
    async def list_plans() -> Response:
        return Response(plans, media_type="application/json")

    @app.get("/me")
    async def read_me() -> Response:
        return Response(me, media_type="application/json")

    return app

"""The HTTP-overhead peer: bare FastAPI serving the same /plans JSON, no middleware, no store."""

from __future__ import annotations

import json
import os

from fastapi import FastAPI
from fastapi.responses import Response

PLANS = os.environ.get("BARE_PLANS_JSON", "[]").encode()
json.loads(PLANS)  # fail loudly on a bad fixture rather than serve garbage

app = FastAPI()


@app.get("/plans")
async def plans() -> Response:
    return Response(PLANS, media_type="application/json")

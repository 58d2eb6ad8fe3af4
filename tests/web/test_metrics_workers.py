"""`/metrics` under `upak serve --workers 2` is the whole service's, whichever worker answers."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.metrics import sample
from tests.support.redis_servers import RedisServer
from tests.support.service import running_service

pytestmark = pytest.mark.slow


def scrape(url: str) -> tuple[str, str]:
    # A new connection each time, so scrapes land on either worker.
    response = httpx.get(url + "/metrics", timeout=10, headers={"Connection": "close"})
    response.raise_for_status()
    worker = httpx.get(url + "/health", timeout=10, headers={"Connection": "close"})
    return response.text, str(worker.json()["worker"])


def test_request_counter_counts_every_worker(shared_redis: RedisServer, tmp_path: Path):
    env = {"REDIS_URL": shared_redis.url, "REDIS_KEY_PREFIX": f"m{uuid.uuid4().hex[:8]}:"}
    with running_service(env, workers=2) as service:
        workers: set[str] = set()
        seen: list[float] = []
        sent = 0
        for _ in range(6):
            for _ in range(5):
                with httpx.Client(base_url=service.url, timeout=10) as client:
                    assert client.get("/plans").status_code == 200
                sent += 1
            text, worker = scrape(service.url)
            workers.add(worker)
            plans = sample(text, "upak_http_requests_total", route="/plans", status="2xx")
            seen.append(plans or 0.0)
            assert seen[-1] == sent, (seen, sent)  # every worker's requests, at once
        assert seen == sorted(seen)  # never decreases between scrapes
        # uvicorn hands connections to either worker: the sums above came from both.
        assert len(workers) == 2 or seen[-1] == sent
        assert "upak_http_request_duration_seconds_bucket" in text
        assert sample(text, "upak_store_mode", mode="redis") == 1.0

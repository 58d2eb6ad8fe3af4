"""Schemathesis against a served instance, every check, from its own `/openapi.json`.

Four runs: Redis up and killed, each anonymous and logged in (a real session cookie,
renewed when a case logs out). Any answer the schema does not describe (a status code,
a header, a body shape, a content type), a 5xx, valid data refused or invalid data
accepted fails the test with schemathesis's own report and a curl line to reproduce it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings
from tests.support.redis_servers import RedisServer, redis_server
from tests.support.service import served_in_thread
from tests.support.yookassa_api import SECRET_KEY, SHOP_ID, yookassa_stand_in
from upak.domain.passwords import fast_passwords_for_tests
from upak.web.app import create_app

pytestmark = pytest.mark.slow

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
REPO = Path(__file__).resolve().parents[2]
# Per operation and phase: small enough that the four runs stay near a minute in all.
MAX_EXAMPLES = "3"
RUN_TIMEOUT = 150
# The coverage phase (every boundary and invalid value of every field: ~450 cases, most of
# the run) checks the schema's shape, which is the same whether Redis is up or who calls: it
# runs once, logged in and Redis up (that run reaches every route, the public ones too). The
# other runs' examples and random cases of every operation check the answers that change.
PHASES_LOGGED_IN_REDIS_UP = "examples,coverage,fuzzing,stateful"
PHASES_REDIS_UP = "examples,fuzzing,stateful"
PHASES_REDIS_KILLED = "examples,fuzzing,stateful"
EMAIL, PASSWORD = "fuzz@upak.ru", "correct horse battery"
UNLIMITED = "1000000/minute"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def service(redis: RedisServer) -> Iterator[str]:
    with yookassa_stand_in() as api:
        yield from _service(redis, api.url)


def _service(redis: RedisServer, yookassa_api_url: str) -> Iterator[str]:
    settings = make_settings(
        # Checkout and confirmations go to the stand-in of YooKassa's API: an unconfigured
        # shop would answer every checkout 503, which the fuzzer rightly calls a server error.
        yookassa_api_url=yookassa_api_url,
        yookassa_shop_id=SHOP_ID,
        yookassa_secret_key=SECRET_KEY,
        redis_url=redis.url,
        # The limits are tested elsewhere; here they would turn most cases into 429s.
        rate_limit_default=UNLIMITED,
        rate_limit_login=UNLIMITED,
        rate_limit_login_ip=UNLIMITED,
        webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        yookassa_allowed_ips="127.0.0.1",  # so the fuzzer reaches past the source check
        redis_socket_timeout=0.2,
        redis_connect_timeout=0.2,
    )
    # Served by uvicorn over real HTTP; in this process so that Argon2's cost (hundreds of
    # logins and registrations) can be the tests' cheap one.
    app = create_app(settings, passwords=fast_passwords_for_tests())
    with served_in_thread(app) as url:
        created = httpx.post(url + "/auth/register", json={"email": EMAIL, "password": PASSWORD})
        assert created.status_code == 201, created.text
        yield url


def _phases(redis_up: bool, logged_in: bool) -> str:
    if not redis_up:
        return PHASES_REDIS_KILLED
    return PHASES_LOGGED_IN_REDIS_UP if logged_in else PHASES_REDIS_UP


def _wait_for_store(service: str, store: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(service + "/health", timeout=2).json()["store"] == store:
            return
        time.sleep(0.1)
    raise AssertionError(f"/health never showed store={store} within {timeout}s")


@pytest.mark.parametrize("logged_in", [False, True], ids=["anonymous", "logged-in"])
@pytest.mark.parametrize("redis_up", [True, False], ids=["redis-up", "redis-killed"])
def test_schemathesis_finds_nothing_the_schema_does_not_say(
    service: str, redis: RedisServer, redis_up: bool, logged_in: bool, tmp_path: Path
) -> None:
    running = redis.proc is not None and redis.proc.poll() is None
    if redis_up and not running:
        redis.start()
    elif not redis_up and running:
        redis.kill()
    _wait_for_store(service, "redis" if redis_up else "memory")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.fuzz_hooks"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if logged_in:
        env.update(UPAK_FUZZ_URL=service, UPAK_FUZZ_EMAIL=EMAIL, UPAK_FUZZ_PASSWORD=PASSWORD)
    run = subprocess.run(
        [
            str(SCHEMATHESIS), "run", service + "/openapi.json",
            "--checks", "all",
            "--mode", "all",  # valid and invalid data
            "--max-examples", MAX_EXAMPLES,
            "--workers", "2",
            "--phases", _phases(redis_up, logged_in),
            "--request-timeout", "10",
            "--no-color",
            "--seed", "15",  # a failure reproduces on the next run
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]

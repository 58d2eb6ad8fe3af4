"""The README's first hour, as a new user runs it: the quick-start block, verbatim, against a
served instance; and every file the README links to is inside the repository."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.redis_servers import RedisServer
from tests.support.service import running_service

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(
    r"<!-- quickstart:start[^>]*-->\s*```sh\n(?P<commands>.*?)```\s*<!-- quickstart:end -->",
    re.DOTALL,
)


def quick_start() -> str:
    match = BLOCK.search(README.read_text())
    assert match, "README.md has no quickstart:start … quickstart:end block"
    return match["commands"]


@pytest.mark.slow  # a real `upak serve`, real Argon2 and the CLI: ~10-20 s on a busy box
def test_the_quick_start_runs_as_written(shared_redis: RedisServer, tmp_path: Path) -> None:
    # A clean directory of the user's own (cookies.txt lands there), with the repository's
    # .venv where the README says the console script is.
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    server_env = {"REDIS_URL": shared_redis.url, "REDIS_KEY_PREFIX": "readme:"}
    with running_service(server_env, workers=1) as service:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "UPAK_"))}
        env.update(UPAK_PORT=str(service.port), REDIS_URL=shared_redis.url)
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", quick_start()],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output + service.log()[-2000:]
    assert '"status":"ok"' in output  # /health: the service is on Redis
    assert output.count('"email":"me@example.com"') == 3  # registered, logged in, /me
    assert "PONG" in output and "Hello UPAK" in output  # upak redis check
    assert (tmp_path / "cookies.txt").exists()


def test_the_readme_links_only_to_files_in_the_repository() -> None:
    text = README.read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert "docs/redis-setup.md" in local and "docs/redis-setup.ru.md" in local
    for link in local:
        target = (REPO / link).resolve()
        assert target.is_relative_to(REPO), f"{link} points outside the repository"
        assert target.exists(), f"{link} does not exist"

"""`make bench`: run every bench script, then write docs/BENCHMARKS.md from their results.

Each script runs in its own process with a deadline, so one slow or broken bench cannot take
the others down; a failure is written into the report rather than hidden.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Order: quick library-level figures first, the full-service load and chaos run last.
SCRIPTS = [
    ("ceiling", 60),
    ("failover", 90),
    ("webhooks", 90),
    ("ratelimit", 540),  # decisions at 1 and 64 callers, HTTP rounds, 3 servers under callgrind
    ("request_path", 540),  # 5 paired wrk rounds per route, then four servers under callgrind
    ("cache", 90),
    ("sessions", 90),
    ("memory", 60),
    ("host_tier", 300),  # 4 workers: 4 outage/up pairs of 3 routes; 1 worker with/without tier
    ("payments", 90),
    ("load", 120),
    ("chaos", 200),  # Redis faults, then the database faults on a PostgreSQL of its own
]


def main() -> int:
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    for stale in results.glob("*.json"):
        stale.unlink()
    failures: dict[str, str] = {}
    started = time.monotonic()
    for name, deadline in SCRIPTS:
        script = HERE / f"{name}.py"
        if not script.exists():
            failures[name] = "not written yet"
            continue
        print(f"== bench/{name}.py (deadline {deadline}s)", flush=True)
        try:
            done = subprocess.run([sys.executable, str(script)], cwd=HERE, timeout=deadline)
        except subprocess.TimeoutExpired:
            failures[name] = f"did not finish within {deadline}s"
            continue
        if done.returncode != 0:
            failures[name] = f"exited with status {done.returncode}"
    from report import write_report

    path = write_report(failures, elapsed=time.monotonic() - started)
    print(f"wrote {path} in {time.monotonic() - started:.0f}s; failures: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

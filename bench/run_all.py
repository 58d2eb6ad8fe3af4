"""`make bench`: run the bench scripts, then write docs/BENCHMARKS.md from their results.

Each script runs in its own process with a deadline, so one slow or broken bench cannot take
the others down; a failure is written into the report rather than hidden.

    .venv/bin/python bench/run_all.py                            # every script, a new report
    .venv/bin/python bench/run_all.py --only request_path,host_tier
    make bench BENCH_ONLY=request_path,host_tier                 # the same, through make

With --only, just those scripts run: their old results are removed first (a script that fails
leaves no stale figures behind, only its failure), the other scripts' last results in
bench/results/*.json are kept, and the whole document is generated again from all of them, so
only the re-run scripts' sections change. Without it every result is removed and re-measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Order: quick library-level figures first, the full-service load and chaos run last.
SCRIPTS = [
    ("ceiling", 90),
    ("client_cost", 480),  # 4 clients under callgrind, two at a time (~75 s idle, 4+ min loaded)
    ("failover", 90),
    ("webhooks", 90),
    ("ratelimit", 600),  # decisions at 1 and 64 callers, 5x3 HTTP rounds, 3 servers in callgrind
    ("request_path", 540),  # 5 paired wrk rounds per route, then four servers under callgrind
    ("cache", 120),
    ("sessions", 120),
    ("memory", 60),
    ("host_tier", 300),  # 4 workers: 4 outage/up pairs of 3 routes; 1 worker with/without tier
    ("payments", 90),
    ("load", 150),
    ("chaos", 200),  # Redis faults, then the database faults on a PostgreSQL of its own
]
DEADLINES = dict(SCRIPTS)


def selected(only: str | None) -> list[str]:
    """The scripts to run, in the report's order; an unknown name is an error, not a skip."""
    if not only:
        return [name for name, _ in SCRIPTS]
    names = [n.strip().removesuffix(".py") for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in DEADLINES]
    if unknown:
        raise SystemExit(
            f"--only: no bench script named {', '.join(unknown)}; "
            f"the scripts are {', '.join(DEADLINES)}"
        )
    return [name for name, _ in SCRIPTS if name in names]


def run_script(script: Path, deadline: float) -> int | None:
    """`script`'s exit status, or None if it overran `deadline`. It runs in a process group
    of its own so that, on a timeout (or Ctrl-C here), what it started goes with it: a
    redis-server or a client under valgrind left behind would load the 2 cores through every
    later script."""
    proc = subprocess.Popen([sys.executable, str(script)], cwd=HERE, start_new_session=True)
    try:
        return proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        _end_group(proc)
        return None
    except BaseException:
        _end_group(proc)
        raise


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM the script's process group, then KILL what is left of it; the leader reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run(names: list[str], results: Path) -> dict[str, str]:
    """Run each script under its deadline; what failed, and why."""
    failures: dict[str, str] = {}
    for name in names:
        deadline = DEADLINES[name]
        script = HERE / f"{name}.py"
        if not script.exists():
            failures[name] = "not written yet"
            continue
        print(f"== bench/{name}.py (deadline {deadline}s)", flush=True)
        returncode = run_script(script, deadline)
        if returncode is None:
            failures[name] = f"did not finish within {deadline}s"
        elif returncode != 0:
            failures[name] = f"exited with status {returncode}"
        elif not (results / f"{name}.json").exists():
            failures[name] = "exited 0 but wrote no result"
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        metavar="NAME,...",
        help="re-run only these scripts (comma-separated, e.g. request_path,host_tier) and "
        "keep the other sections' last results",
    )
    args = parser.parse_args(argv)
    names = selected(args.only)
    from report import FAILURES, RESULTS, write_report

    RESULTS.mkdir(parents=True, exist_ok=True)
    known = json.loads(FAILURES.read_text()) if args.only and FAILURES.exists() else {}
    for name in names if args.only else [p.stem for p in RESULTS.glob("*.json")]:
        (RESULTS / f"{name}.json").unlink(missing_ok=True)
        known.pop(name, None)
    started = time.monotonic()
    failures = run(names, RESULTS)
    FAILURES.write_text(json.dumps({**known, **failures}, indent=2))
    path = write_report(elapsed=None if args.only else time.monotonic() - started)
    print(f"wrote {path} in {time.monotonic() - started:.0f}s; failures: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

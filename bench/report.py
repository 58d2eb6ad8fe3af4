"""docs/BENCHMARKS.md from bench/results/*.json: tables, ratios and plots, nothing typed by hand.

The whole document is generated, every time, from each script's last result: a script's
section is its table, its rows' setups, its notes and when and under what load it ran; no
paragraph is added or patched by hand. `bench/run_all.py --only NAME,...` re-runs some scripts
and calls write_report(), so their sections change and the others' stay as last measured.
`python bench/report.py` rewrites the document from the results as they are.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
PLOTS = DOCS / "bench"

ORDER = [
    "ceiling",
    "client_cost",
    "failover",
    "webhooks",
    "ratelimit",
    "request_path",
    "cache",
    "sessions",
    "memory",
    "host_tier",
    "payments",
    "load",
    "chaos",
]


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"


def _plot(name: str, curve: dict) -> list[str]:
    """Throughput and p99 against concurrency, ours next to the peers, as two PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    files = []
    for measure, label in (("rps", "requests/s"), ("p99_ms", "p99 latency (ms)")):
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        for series, points in curve["series"].items():
            ax.plot(curve["x"], points[measure], marker="o", label=series)
        ax.set_xlabel(curve.get("x_label", "concurrent connections"))
        ax.set_ylabel(label)
        ax.set_title(f"{curve['title']}: {label}")
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = PLOTS / f"{name}-{curve['id']}-{measure}.png"
        fig.savefig(path)
        plt.close(fig)
        files.append(path.relative_to(DOCS).as_posix())
    return files


FAILURES = RESULTS / "failures.json"  # bench/run_all.py's record of scripts that gave none


def load_results() -> dict[str, dict]:
    """Every script's last result, by name (bench/results/NAME.json)."""
    return {
        p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json")) if p != FAILURES
    }


def load_failures() -> dict[str, str]:
    """bench/run_all.py's recorded failures, less those of scripts that have written a result
    since (a script re-run by hand: `.venv/bin/python bench/NAME.py`, then this module)."""
    if not FAILURES.exists():
        return {}
    recorded = FAILURES.stat().st_mtime
    return {
        name: why
        for name, why in json.loads(FAILURES.read_text()).items()
        if not (RESULTS / f"{name}.json").exists()
        or (RESULTS / f"{name}.json").stat().st_mtime < recorded
    }


def _when(name: str, data: dict) -> str:
    """The line that opens a section: when and under what load its script ran."""
    run = data.get("run") or {}
    extra = data.get("extra", {})
    started = run.get("started_utc") or extra.get("measured_utc")
    seconds = run.get("seconds", extra.get("seconds"))
    load_start = run.get("load_start", extra.get("load_before"))
    if started is None:
        return f"Measured by `bench/{name}.py` (its result records no time)."
    load = (
        f"the 1-minute load average {load_start:.2f} at its start"
        + (f" and {run['load_end']:.2f} at its end" if "load_end" in run else "")
        if load_start is not None
        else "no load average recorded"
    )
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    return (
        f"Measured on {started} by `bench/{name}.py`{took}; {load} on "
        f"{data.get('machine', {}).get('cores', '?')} cores shared with other sessions' tests "
        "and callgrind runs: every ratio compares two figures this script measured in this "
        "run (timed ones in paired rounds, counted ones after the same warm-up); absolute "
        "timings move with that load and are not comparable across runs."
    )


def _ratio(row: dict) -> str:
    if row.get("ratio") is not None:
        return f"{row['ratio']:.2f}x"
    if row.get("peer") is not None and row.get("comparable") is False:
        return "no ratio: two different things"
    return ""


def section(name: str, data: dict) -> list[str]:
    """One script's section: when and how loaded, its table, its notes, its plots."""
    setups = any(row.get("setup") for row in data["rows"])
    lines = [f"## {data['title']}", "", _when(name, data), ""]
    if setups:
        lines += [
            "| measure | ours | peer | peer figure | ratio | how measured |",
            "|---|---:|---|---:|---:|---|",
        ]
    else:
        lines += ["| measure | ours | peer | peer figure | ratio |", "|---|---:|---|---:|---:|"]
    for row in data["rows"]:
        cells = [
            row["metric"],
            f"{fmt(row['ours'])} {row['unit']}",
            row.get("peer_name") or "",
            fmt(row.get("peer")),
            _ratio(row),
        ]
        if setups:
            cells.append(row.get("setup") or "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {note}" for note in data.get("notes", [])]
    if data.get("notes"):
        lines.append("")
    for curve in data.get("extra", {}).get("curves", []):
        for image in _plot(name, curve):
            lines.append(f"![{curve['title']}]({image})")
        lines.append("")
    return lines


def write_report(failures: dict[str, str] | None = None, elapsed: float | None = None) -> Path:
    """docs/BENCHMARKS.md, whole, from bench/results/*.json (every script's last result) and
    the failures bench/run_all.py recorded; `failures` given here are added to those."""
    failures = {**load_failures(), **(failures or {})}
    results = load_results()
    names = [n for n in ORDER if n in results] + sorted(set(results) - set(ORDER))
    machine = next(iter(results.values()))["machine"] if results else {}
    lines = [
        "# Benchmarks",
        "",
        "Generated by bench/run_all.py (`make bench`; `bench/run_all.py --only NAME,...` "
        "re-runs some scripts and keeps the others' last results) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, from bench/results/*.json: "
        "every figure below was printed by a bench script, none is typed by hand. Each "
        "section says when its script ran and the machine's load then. Ours and the peer's "
        "were measured by the same script on the same Redis, both sides warmed; timed "
        "figures in paired rounds whose order alternates, instruction counts (callgrind) "
        "after the same warm-up on each side; the ratio says how many times better ours is (above "
        "1 is better for us, whichever direction the unit runs). A row's concurrency, key "
        "distribution and the peer's configuration are in its name or its 'how measured' "
        "cell, else in the section's notes. Where ours and the peer's figures are of "
        "different things (a memory answer next to a timeout) both are given and no ratio.",
        "",
        f"Machine: {machine.get('cores', '?')} cores, Python {machine.get('python', '?')}, "
        f"Redis {machine.get('redis', '?')}, {machine.get('platform', '?')}."
        + (f" The last bench/run_all.py run took {elapsed:.0f} s." if elapsed else ""),
        "",
    ]
    for name in names:
        lines += section(name, results[name])
    if failures:
        lines += ["## Benches that did not produce figures", ""]
        lines += [f"- `bench/{name}.py`: {why}" for name, why in sorted(failures.items())]
        lines.append("")
    DOCS.mkdir(exist_ok=True)
    path = DOCS / "BENCHMARKS.md"
    path.write_text("\n".join(lines))
    update_readme()
    return path


README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
# The figures that matter most, by (result, metric prefix); the README shows them. The
# rate limiter's cost to a route is there whatever it comes out at: it is the target.
LABELS = {
    "chaos": "chaos run (kill -9, SIGSTOP, restarts under load)",
    "failover": "one call",
    "ratelimit": "rate limiting",
    "cache": "caching",
    "request_path": "request path",
}
HEADLINES = [
    ("chaos", "5xx responses during the whole run"),
    ("chaos", "duplicate webhook effects"),
    ("chaos", "sessions lost across kill -9 and SIGSTOP"),
    ("chaos", "Redis full (maxmemory, noeviction): 5xx"),
    ("chaos", "Redis BUSY (script): 5xx"),
    ("chaos", "Redis flapping (connections killed every 0.2 s): valid sessions answered 401"),
    ("failover", "p99 latency, Redis hung"),
    ("ratelimit", "decisions/s, sliding log (exact), one process, 1 concurrent caller"),
    ("ratelimit", "decisions/s, sliding log (exact), one process, 64 concurrent callers"),
    ("ratelimit", "HTTP req/s, our middleware / slowapi, median of"),
    ("ratelimit", "HTTP req/s, our middleware / no limiter, median of"),
    ("ratelimit", "server + redis-server CPU us per request, our middleware vs no limiter"),
    ("ratelimit", "server instructions per request, our middleware vs no limiter"),
    ("request_path", "GET /plans: server instructions per request"),
    ("request_path", "GET /me: server instructions per request"),
    ("cache", "cache-hit get, 1 concurrent caller, 10,000 distinct keys"),
    ("cache", "cache-hit get, 64 concurrent callers, 10,000 distinct keys"),
]


def _headline_rows(results: dict[str, dict]) -> list[str]:
    rows = []
    for name, prefix in HEADLINES:
        for row in results.get(name, {}).get("rows", []):
            if row["metric"].startswith(prefix):
                peer = f"{fmt(row['peer'])} ({row['peer_name']})" if row.get("peer") else ""
                ratio = _ratio(row)
                label = f"{LABELS.get(name, name)}: {row['metric']}"
                rows.append(f"| {label} | {fmt(row['ours'])} {row['unit']} | {peer} | {ratio} |")
                break
    return rows


def update_readme() -> None:
    """Put the headline figures of the last run between the README's bench markers."""
    results = load_results()
    text = README.read_text()
    if START not in text or END not in text:
        return
    table = [
        "| measure | ours | peer, same run | ratio |",
        "|---|---:|---:|---:|",
        *_headline_rows(results),
    ]
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    README.write_text(head + START + "\n" + "\n".join(table) + "\n" + END + tail)


if __name__ == "__main__":
    print(write_report())

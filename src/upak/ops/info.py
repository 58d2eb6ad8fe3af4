"""`upak redis info [section]`: the seed's monitoring (`info stats`, `info memory`, …) as tables.

Without a section: the fields that matter from each of server, clients, memory, stats,
persistence and keyspace, plus what an operator actually asks (hit ratio, evictions, memory
against maxmemory) and UPAK's keys by feature. With a section: every field of it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from upak.ops.server import (
    DEFAULT_SCAN_LIMIT,
    Ops,
    count_upak_keys,
    hit_ratio,
    human_bytes,
    info,
    node_clients,
)

SECTIONS = ("server", "clients", "memory", "stats", "persistence", "keyspace")

# The fields worth a glance in the overview, per section.
SUMMARY_FIELDS: dict[str, tuple[str, ...]] = {
    "server": (
        "redis_version",
        "redis_mode",
        "os",
        "process_id",
        "tcp_port",
        "uptime_in_days",
        "config_file",
    ),
    "clients": ("connected_clients", "blocked_clients", "maxclients"),
    "memory": (
        "used_memory_human",
        "used_memory_peak_human",
        "used_memory_rss_human",
        "maxmemory_human",
        "maxmemory_policy",
        "mem_fragmentation_ratio",
    ),
    "stats": (
        "instantaneous_ops_per_sec",
        "total_commands_processed",
        "keyspace_hits",
        "keyspace_misses",
        "evicted_keys",
        "expired_keys",
        "rejected_connections",
    ),
    "persistence": (
        "rdb_bgsave_in_progress",
        "rdb_last_bgsave_status",
        "rdb_last_save_time",
        "rdb_changes_since_last_save",
        "aof_enabled",
        "aof_last_write_status",
    ),
    "keyspace": (),  # every db line
}


@dataclass
class NodeInfo:
    address: str
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)


@dataclass
class InfoReport:
    target: str
    section: str | None
    nodes: list[NodeInfo] = field(default_factory=list)
    upak_keys: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def derive(fields: dict[str, Any]) -> dict[str, Any]:
    """What the raw numbers mean: hit ratio, evictions, memory against maxmemory.
    `fields` is flat INFO output (one or several sections)."""
    derived: dict[str, Any] = {}
    if "keyspace_hits" in fields:
        ratio = hit_ratio(fields)
        derived["hit_ratio"] = None if ratio is None else round(ratio, 4)
        derived["evicted_keys"] = int(fields.get("evicted_keys", 0))
    if "used_memory" in fields:
        used, limit = int(fields["used_memory"]), int(fields.get("maxmemory", 0))
        derived["used_memory"] = used
        derived["maxmemory"] = limit
        derived["memory_used_percent"] = round(100 * used / limit, 1) if limit else None
        derived["maxmemory_policy"] = fields.get("maxmemory_policy")
    return derived


def collect(ops: Ops, section: str | None, scan_limit: int = DEFAULT_SCAN_LIMIT) -> InfoReport:
    report = InfoReport(target=ops.ops_settings().redis.redacted_url(), section=section)
    with ops.connected() as client:
        for address, node in node_clients(client):
            if section:
                fields = info(node, section)
                sections = {section: fields}
            else:
                fields = info(node, "everything")  # one round trip for the overview
                sections = {name: _section_of(fields, name) for name in SECTIONS}
            report.nodes.append(NodeInfo(address, sections, derive(fields)))
        if section in (None, "keyspace"):
            report.upak_keys = count_upak_keys(client, ops.keyspace, scan_limit)
    return report


def _section_of(everything: dict[str, Any], name: str) -> dict[str, Any]:
    """Pick one section's fields out of INFO everything (one round trip for the overview)."""
    if name == "keyspace":
        return {k: v for k, v in everything.items() if k.startswith("db") and k[2:].isdigit()}
    fields = SUMMARY_FIELDS[name]
    return {k: everything[k] for k in fields if k in everything}


def _fmt(name: str, value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if name == "rdb_last_save_time" and isinstance(value, int):
        return dt.datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")
    return str(value)


def render_info(report: InfoReport, console: Console) -> None:
    for node in report.nodes:
        for name, fields in node.sections.items():
            title = f"{name} ({node.address})" if len(report.nodes) > 1 else name
            table = Table(title=title, show_header=False, title_justify="left")
            table.add_column("field", style="bold")
            table.add_column("value")
            for key, value in fields.items():
                table.add_row(key, _fmt(key, value))
            if not fields:
                table.add_row("(empty)", "")
            console.print(table)
        if node.derived:
            console.print(_derived_table(node))
    if report.upak_keys:
        console.print(_keys_table(report.upak_keys))


def _derived_table(node: NodeInfo) -> Table:
    d = node.derived
    table = Table(title="at a glance", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    if "hit_ratio" in d:
        ratio = d["hit_ratio"]
        table.add_row("hit ratio", "n/a (no reads yet)" if ratio is None else f"{ratio:.1%}")
        table.add_row("evicted keys", str(d["evicted_keys"]))
    if "used_memory" in d:
        if d["maxmemory"]:
            memory = (
                f"{human_bytes(d['used_memory'])} of {human_bytes(d['maxmemory'])} "
                f"({d['memory_used_percent']}%), policy {d['maxmemory_policy']}"
            )
        else:
            memory = f"{human_bytes(d['used_memory'])}, no maxmemory (unbounded)"
        table.add_row("memory", memory)
    return table


def _keys_table(keys: dict[str, Any]) -> Table:
    suffix = "" if keys["complete"] else f" (first {keys['limit']} keys only)"
    table = Table(title=f"UPAK keys by feature{suffix}", title_justify="left")
    table.add_column("feature", style="bold")
    table.add_column("keys", justify="right")
    for feature, count in keys["by_feature"].items():
        table.add_row(feature, str(count))
    table.add_row("total", str(keys["total"]), style="bold")
    return table

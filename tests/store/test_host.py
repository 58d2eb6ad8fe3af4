"""The host tier: its encoding, sharing between processes, locks that die with their holder,
stale state and byte budgets. The twins themselves run on it in the contract suite."""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from upak.features.sessions import (
    CREATE,
    RESOLVE,
    REVOKE,
    TOUCH,
    NewSession,
    Revocation,
    Touch,
    Use,
)
from upak.store import host as host_module
from upak.store.host import (
    Budgets,
    HostData,
    HostStore,
    HostTier,
    UndecodableRow,
    _PackedZSet,
    decode,
    encode,
    tier_name,
)
from upak.store.journal import Entry, Outage, decode_call, encode_call
from upak.store.memory import IntLog, KeyRegistry, _ZSet
from upak.store.operation import NO_ARGS, Operation
from upak.store.primitives import CLAIM_ONCE, DELETE, GET, SET, Expiring

NAME = tier_name("127.0.0.1:6379/0", "upak:")


@pytest.mark.parametrize(
    "value",
    [
        b"\x00\xff plain",
        {b"f": b"v", b"": b"\x00"},
        {b"a", b"b", b""},
        _ZSet({b"m": 1.5, b"n": -2.0}),
        IntLog([1, 2**40, -3]),
        KeyRegistry([("b", "x"), ("a", "y")]),
        [b"x", b"y"],
    ],
)
def test_every_value_type_round_trips_with_its_type(value: object) -> None:
    for expires in (None, 1_796_000_000_000):
        back, back_expires = decode(encode(value, expires))
        assert back == value and type(back) is type(value) and back_expires == expires


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"b",
        b"x" + bytes(8),
        b"h" + bytes(8) + b"\x00\x00\x00\x09ab",
        b"Z" + bytes(8) + b"\x00\x00\x00\x01" + bytes(12) + b"extra",  # members overrun
        b"Z" + bytes(8) + b"\x00\x00\x00\x05",  # five members announced, none there
        b"m" + bytes(8) + b"\x93\x01",  # a msgpack array cut short, not a map
        b"m" + bytes(8) + b"\x81\x01\xc4\x01v",  # a map whose field is a number
    ],
)
def test_a_malformed_row_is_refused(blob: bytes) -> None:
    with pytest.raises(UndecodableRow):
        decode(blob)


def test_a_sorted_set_in_the_older_layout_still_decodes() -> None:
    head = (-1).to_bytes(8, "big", signed=True)
    member = b"m"
    older = b"z" + head + len(member).to_bytes(4, "big") + member + struct.pack(">d", 2.5)
    assert decode(older) == (_ZSet({b"m": 2.5}), None)


def test_an_undecodable_row_is_absent_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tier = HostTier(tmp_path, NAME)
    tier.db.execute("INSERT INTO kv VALUES ('k', x'ff00', NULL, 3, 'main', 0)")
    with caplog.at_level(logging.WARNING):
        assert HostData(tier).get("k") is None
        assert HostData(tier).get("k") is None
    assert sum("does not decode" in r.message for r in caplog.records) == 1
    tier.close()


def test_tier_names_separate_targets_and_prefixes_and_hide_passwords() -> None:
    assert tier_name("a:6379/0", "upak:") != tier_name("a:6379/1", "upak:")
    assert tier_name("a:6379/0", "upak:") != tier_name("a:6379/0", "other:")
    assert "6379" not in tier_name("a:6379/0", "upak:")


def test_the_directory_is_private(tmp_path: Path) -> None:
    HostTier(tmp_path / "tier", NAME).close()
    assert (tmp_path / "tier").stat().st_mode & 0o777 == 0o700


async def test_two_stores_on_one_tier_see_each_other(tmp_path: Path) -> None:
    one, two = HostStore(HostTier(tmp_path, NAME)), HostStore(HostTier(tmp_path, NAME))
    assert await one.claim_once("claim", 10_000) is True
    assert await two.claim_once("claim", 10_000) is False
    await two.set("k", "v", 10_000)
    assert await one.get("k") == b"v"
    assert await one.delete("k") is True and await two.get("k") is None
    await one.close()
    await two.close()


@dataclass(frozen=True)
class FieldValue:
    field: str
    value: str


def test_twins_mutating_in_place_are_written_back(tmp_path: Path) -> None:
    store = HostStore(HostTier(tmp_path, NAME))
    hset = lambda data, keys, args: data.hset(keys[0], {args.field: args.value})  # noqa: E731
    op = Operation(name="test_host_hset", lua="", args=FieldValue, memory=hset)
    store.execute(op, ["h"], FieldValue("a", "1"))
    store.execute(op, ["h"], FieldValue("b", "2"))
    assert HostData(store.tier).hgetall("h") == {b"a": b"1", b"b": b"2"}


def test_expiry_follows_the_injected_clock(tmp_path: Path) -> None:
    clock = [1000.0]
    store = HostStore(HostTier(tmp_path, NAME, clock=lambda: clock[0]))
    assert store.execute(CLAIM_ONCE, ["c"], Expiring("1", 50)) == 1
    clock[0] += 0.051
    assert store.execute(CLAIM_ONCE, ["c"], Expiring("1", 50)) == 1


# --- locks and processes ---


def lock_holder(lock: Path) -> Iterator[subprocess.Popen[str]]:
    """A process that takes a tier's write lock (its `.lock` file) and keeps it until killed."""
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    try:
        yield child
    finally:
        child.kill()
        child.wait(5)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    HostTier(tmp_path, NAME).close()  # create the files first
    yield from lock_holder(tmp_path / f"{NAME}.lock")


def test_a_killed_holder_leaves_no_lock(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(5)
    store = HostStore(HostTier(tmp_path, NAME, lock_timeout=0.05))
    store.execute(SET, ["k"], Expiring("v", 10_000))
    assert store.unlocked_calls == 0 and HostData(store.tier).get("k") == b"v"


def test_a_stuck_holder_costs_a_bounded_wait_then_process_memory(tmp_path: Path) -> None:
    store = HostStore(HostTier(tmp_path, NAME, lock_timeout=0.05))
    for child in lock_holder(tmp_path / f"{NAME}.lock"):
        os.kill(child.pid, signal.SIGSTOP)  # holds the lock and will never let go by itself
        started = time.monotonic()
        store.execute(SET, ["k"], Expiring("v", 10_000))
        assert time.monotonic() - started < 0.5
        assert store.execute(GET, ["k"], NO_ARGS) == b"v"  # the "none" tier answers on its own
        assert store.unlocked_calls == 2
        os.kill(child.pid, signal.SIGCONT)
    # Holder gone: the tier serves again, and never saw the process-memory write.
    assert store.execute(GET, ["k"], NO_ARGS) is None and store.unlocked_calls == 2


# --- stale state ---


def test_a_tier_from_another_boot_is_wiped(tmp_path: Path) -> None:
    tier = HostTier(tmp_path, NAME)
    HostStore(tier).execute(SET, ["k"], Expiring("v", 10_000))
    tier.db.execute("UPDATE meta SET value = 'another-boot' WHERE name = 'boot_id'")
    tier.close()
    again = HostTier(tmp_path, NAME)
    assert HostData(again).get("k") is None and again.used("main") == 0


def test_the_first_member_drops_mirrors_but_keeps_outage_rows(tmp_path: Path) -> None:
    first = HostTier(tmp_path, NAME)
    HostStore(first).execute(SET, ["outage"], Expiring("v", 10_000))
    HostStore(first).execute(SET, ["mirror"], Expiring("v", 10_000), mirrored=True)
    second = HostTier(tmp_path, NAME)  # another live member: nothing dropped
    assert HostData(second).get("mirror") == b"v"
    first.close()
    second.close()
    fresh = HostTier(tmp_path, NAME)  # nobody holds the tier: mirrors may be stale
    assert HostData(fresh).get("mirror") is None
    assert HostData(fresh).get("outage") == b"v"


# --- byte budgets ---


def test_a_rate_limit_flood_cannot_evict_sessions(tmp_path: Path) -> None:
    tier = HostTier(tmp_path, NAME, budgets=Budgets(main=100_000, ratelimit=20_000))
    store = HostStore(tier)
    store.execute(SET, ["upak:session:1"], Expiring("s" * 200, 60_000))
    for i in range(2_000):
        store.execute(SET, [f"upak:ratelimit:ip:{i}"], Expiring("1", 60_000 + i))
    assert tier.used("ratelimit") <= 20_000
    assert HostData(tier).get("upak:session:1") == b"s" * 200
    # The newest counters stay; the soonest-expiring went first.
    assert HostData(tier).get("upak:ratelimit:ip:1999") == b"1"
    assert HostData(tier).get("upak:ratelimit:ip:0") is None


def test_the_main_budget_evicts_the_soonest_expiring(tmp_path: Path) -> None:
    tier = HostTier(tmp_path, NAME, budgets=Budgets(main=5_000, ratelimit=1_000))
    store = HostStore(tier)
    store.execute(SET, ["forever"], Expiring("x" * 100, 10**9))
    for i in range(100):
        store.execute(SET, [f"k{i}"], Expiring("x" * 100, 1_000 + i))
    assert tier.used("main") <= 5_000
    assert HostData(tier).get("forever") is not None and HostData(tier).get("k0") is None


# --- the tier's journal ---


def test_a_journaled_call_round_trips_with_its_argument_types() -> None:
    keys = ("upak:sessions:{u1}:s:h", "ключ")
    args = ("text", b"\x00\xff", 2**40, -1, 1.5, True)
    assert decode_call(encode_call(keys, args)) == (keys, ("text", b"\x00\xff", 2**40, -1, 1.5, 1))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x00\x00\x00\x02\x00\x00\x00\x01k",
        b"\x00\x00\x00\x00x",
        b"\x00\x00\x00\x00s\x00\x00\x00\x09ab",
    ],
)
def test_a_malformed_journal_entry_is_refused(blob: bytes) -> None:
    with pytest.raises(ValueError):
        decode_call(blob)


# A record of each journaled operation these tests use (what it holds does not matter here).
_RECORDS: dict[str, Any] = {
    CLAIM_ONCE.name: lambda i: Expiring(f"v{i}", 60_000),
    TOUCH.name: lambda i: Touch(i, 60_000, i),
    REVOKE.name: lambda i: Revocation(f"h{i}", i, 60_000),
}


def journaled(op: Operation[Any, Any], i: int) -> Entry:
    return Entry(op, (f"k{i}",), _RECORDS[op.name](i), i, "redis-a")


def test_a_journaled_record_comes_back_as_the_record(tmp_path: Path) -> None:
    tier = HostTier(tmp_path, NAME)
    record = NewSession("h" * 32, 1, 2, 3, 4, "10.0.0.1", "agent ü", 5)
    keys = ("s", "i", "f", "t", "p")
    with tier.locked():
        tier.append(Entry(CREATE, keys, record, 7, "redis-a"), max_entries=10)
    (entry,) = tier.pending("redis-a", 10)
    assert (entry.op, entry.keys, entry.args, entry.at_ms) == (CREATE, keys, record, 7)
    assert type(entry.args) is NewSession


def test_a_full_tier_journal_drops_touches_first_and_never_a_revocation(tmp_path: Path) -> None:
    tier = HostTier(tmp_path, NAME)
    calls = [TOUCH] * 3 + [CLAIM_ONCE] * 5 + [REVOKE] * 2
    with tier.locked():
        for i, op in enumerate(calls):
            tier.append(journaled(op, i), max_entries=10)
        tier.append(journaled(CLAIM_ONCE, 10), max_entries=10)  # full: a tenth of room made
    kept = [(entry.op.name, entry.at_ms) for entry in tier.pending("redis-a", 100)]
    assert kept[0] == ("sessions.touch", 1) and len(kept) == 10  # the oldest touch went
    assert tier.dropped == {"redis-a": 1}
    with tier.locked():  # a journal of revocations only grows past its cap
        for i in range(11, 40):
            tier.append(journaled(REVOKE, i), max_entries=10)
    names = [entry.op.name for entry in tier.pending("redis-a", 100)]
    assert names.count("sessions.revoke") == 31 and "sessions.touch" not in names
    assert tier.journal_size("redis-a") == len(names)
    assert tier.pending("redis-b", 100) == []  # another partition's journal is its own


def test_an_entry_this_process_cannot_replay_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tier = HostTier(tmp_path, NAME)
    with tier.locked():
        tier.append(journaled(CLAIM_ONCE, 1), max_entries=10)
        tier.db.execute(
            "INSERT INTO journal (part, op, call, at_ms, kind)"
            " VALUES ('redis-a', 'gone', x'00', 2, 1)"
        )
    with caplog.at_level(logging.ERROR, logger="upak.store.host"):
        first, second = tier.pending("redis-a", 10)
    assert first.op is CLAIM_ONCE and first.keys == ("k1",)
    assert second.op.replay_args is not None and second.op.replay_args(NO_ARGS, 0) is None
    assert "unknown operation 'gone'" in caplog.text or "does not decode" in caplog.text
    tier.done("redis-a", second.seq)
    assert tier.journal_size("redis-a") == 0 and tier.pending("redis-a", 10) == []


def test_the_host_s_breaker_is_one_word_every_worker_reads(tmp_path: Path) -> None:
    a, b = HostStore(HostTier(tmp_path, NAME)), HostStore(HostTier(tmp_path, NAME))
    assert a.outage("redis-a") is None
    a.mark_down("redis-a", Outage("oom", 100.0))
    assert b.outage("redis-a") == Outage("oom", 100.0)
    b.mark_down("redis-a", Outage("timeout", 50.0))  # a shorter hold never shortens it
    assert a.outage("redis-a") == Outage("oom", 100.0)
    assert not b.mark_up("redis-a", now=99.0)  # the hold has not passed
    a.execute(CLAIM_ONCE, ["k"], Expiring("v", 1000), journaled(CLAIM_ONCE, 1))
    assert not b.mark_up("redis-a", now=101.0)  # a call is still owed to Redis
    b.tier.done("redis-a", b.tier.pending("redis-a", 1)[0].seq)
    assert b.mark_up("redis-a", now=101.0) and a.outage("redis-a") is None
    with a.writer("redis-a") as journals_a, b.writer("redis-a") as journals_b:
        assert len(journals_a) == 2 and journals_b == [b.journal]  # one writer per host


def test_a_log_written_oldest_first_by_an_older_worker_reads_newest_first() -> None:
    head = (-1).to_bytes(8, "big", signed=True)
    legacy = b"q" + head + b"".join(n.to_bytes(8, "big", signed=True) for n in (1, 2, 3))
    assert decode(legacy) == (IntLog([3, 2, 1]), None)  # the order the script keeps
    assert decode(encode(IntLog([3, 2, 1]), None)) == (IntLog([3, 2, 1]), None)


# --- the session mirror's cost ---


def test_a_session_copied_again_leaves_its_user_s_index_row_as_it_was(tmp_path: Path) -> None:
    # The index holds up to MAX_SESSIONS_PER_USER members: rewriting it on every copy made a
    # copy cost O(the user's sessions). Its expiry is pushed far enough ahead to be left alone.
    store = HostStore(HostTier(tmp_path, NAME), remember_interval=0)
    keys = ["upak:sessions:{u1}:s:h", "upak:sessions:{u1}:index"]
    start = 1_700_000_000_000

    def copy(now: int) -> None:
        reply = [str(start).encode(), str(now).encode(), str(start + 86_400_000).encode(), b"", b""]
        store.remember(RESOLVE, keys, Use("h", now, 3_600_000), reply)

    copy(start)
    index = store.tier.load_row(keys[1])
    copy(start + 1_000)  # seen a second later: the session's own expiry moves on
    assert store.tier.load_row(keys[0]) is not None
    assert store.tier.load_row(keys[1]) == index


def test_a_hash_written_field_by_field_by_an_older_worker_still_reads() -> None:
    head = (-1).to_bytes(8, "big", signed=True)
    legacy = b"h" + head + b"".join(len(f).to_bytes(4, "big") + f for f in (b"s", b"12", b"", b"x"))
    assert decode(legacy) == ({b"s": b"12", b"": b"x"}, None)
    assert encode({b"s": b"12"}, None)[:1] == b"m"  # written as a msgpack map now


# --- what a call reads without the lock ---


def test_a_lookup_reads_without_the_lock_and_sees_what_another_process_committed(
    tmp_path: Path,
) -> None:
    a, b = HostStore(HostTier(tmp_path, NAME)), HostStore(HostTier(tmp_path, NAME))
    base, now = "upak:sessions:{u1}:", 1_700_000_000_000
    session, index, tomb = base + "s:h", base + "index", base + "t:h"
    a.tier.clock = b.tier.clock = lambda: now / 1000
    b.execute(
        CREATE,
        [session, index, base + "floor", tomb, base + "s:"],
        NewSession("h", now, now + 86_400_000, 3_600_000, now, "", "", 100),
    )
    for child in lock_holder(tmp_path / f"{NAME}.lock"):
        os.kill(child.pid, signal.SIGSTOP)  # nobody may take the write lock meanwhile
        assert a.execute(RESOLVE, [session, index], Use("h", now, 3_600_000)) is not None
        os.kill(child.pid, signal.SIGCONT)
    assert a.unlocked_calls == 0  # served from the tier, not from a's own memory
    assert b.execute(REVOKE, [session, index, tomb], Revocation("h", now, 86_400_000))
    assert a.execute(RESOLVE, [session, index], Use("h", now, 3_600_000)) is None


def test_a_read_sees_its_keys_as_of_one_moment(tmp_path: Path) -> None:
    # The entry and its tag, read in one statement: another process's change lands wholly
    # before the read or wholly after it, never between the two rows.
    a, b = HostStore(HostTier(tmp_path, NAME)), HostStore(HostTier(tmp_path, NAME))
    both = Operation(
        name="both", lua="", args=type(NO_ARGS), memory=lambda d, k, a: [d.get(k[0]), d.get(k[1])]
    )
    b.execute(SET, ["e"], Expiring("v1", 60_000))
    b.execute(SET, ["t"], Expiring("v1", 60_000))
    seen = []

    def twin(data: Any, keys: Any, args: Any) -> Any:
        first = data.get(keys[0])
        # Between the twin's two reads, another process replaces both rows.
        b.execute(SET, ["e"], Expiring("v2", 60_000))
        b.execute(SET, ["t"], Expiring("v2", 60_000))
        seen.append([first, data.get(keys[1])])
        return seen[-1]

    assert a.execute(both, ["e", "t"], NO_ARGS, twin=twin) == [b"v1", b"v1"]
    assert a.execute(both, ["e", "t"], NO_ARGS) == [b"v2", b"v2"]


def test_a_read_of_keys_the_call_did_not_name_runs_in_one_snapshot(tmp_path: Path) -> None:
    # A user's sessions, found in the index: read in one read transaction, not one SELECT.
    a, b = HostStore(HostTier(tmp_path, NAME)), HostStore(HostTier(tmp_path, NAME))
    listed = Operation(
        name="listed",
        lua="",
        args=type(NO_ARGS),
        families=(0,),
        memory=lambda d, k, a: [d.get(k[0] + "x"), d.get(k[0] + "y")],
    )
    b.execute(SET, ["fam:x"], Expiring("1", 60_000))
    b.execute(SET, ["fam:y"], Expiring("1", 60_000))

    def twin(data: Any, keys: Any, args: Any) -> Any:
        first = data.get("fam:x")
        b.execute(SET, ["fam:x"], Expiring("2", 60_000))
        b.execute(SET, ["fam:y"], Expiring("2", 60_000))
        return [first, data.get("fam:y")]

    assert a.execute(listed, ["fam:"], NO_ARGS, twin=twin) == [b"1", b"1"]
    assert a.execute(listed, ["fam:"], NO_ARGS) == [b"2", b"2"]


def test_an_operation_that_writes_goes_to_the_lock_and_its_write_lands(tmp_path: Path) -> None:
    a, b = HostStore(HostTier(tmp_path, NAME)), HostStore(HostTier(tmp_path, NAME))
    for n in range(40):  # past READ_FIRST_BACKOFF: each call's write lands either way
        assert a.execute(CLAIM_ONCE, [f"k{n}"], Expiring("v", 60_000)) in (1, b"1", True)
        assert b.execute(GET, [f"k{n}"], NO_ARGS) == b"v"


def test_the_byte_count_matches_the_rows_after_rewrites_and_deletes(tmp_path: Path) -> None:
    tier = HostTier(tmp_path, NAME)
    store = HostStore(tier)
    for n in range(50):
        store.execute(SET, [f"k{n % 7}"], Expiring("v" * (n % 5 + 1), 60_000))
        store.execute(SET, [f"upak:ratelimit:{n % 3}"], Expiring(str(n), 60_000))
        if n % 4 == 0:
            store.execute(DELETE, [f"k{n % 7}"], NO_ARGS)
    for ns in ("main", "ratelimit"):
        (rows,) = tier.db.execute("SELECT coalesce(sum(size), 0) FROM kv WHERE ns = ?", (ns,))
        assert tier.used(ns) == rows[0]


# --- a sorted set checked in its stored bytes ---


@pytest.mark.parametrize(
    "members",
    [
        {b"ab": 1.0, b"b": 2.0, b"abab": 3.0, b"ba": 4.0},  # members inside other members
        {b"x" * 32: 5.0},
        {bytes([n]) * (n % 4 + 1): float(n) for n in range(60)},
    ],
)
def test_a_packed_sorted_set_finds_exactly_its_members(members: dict[bytes, float]) -> None:
    packed = _PackedZSet.parse(encode(_ZSet(members), None))
    assert packed is not None
    for member, score in members.items():
        assert packed.score(member) == score
    for absent in (b"a", b"bab", b"abb", b"zz", b"x" * 31, b"x" * 33):
        if absent not in members:
            assert packed.score(absent) is None


def test_a_session_copied_again_never_decodes_its_user_s_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HostStore(HostTier(tmp_path, NAME), remember_interval=0)
    start = 1_700_000_000_000

    def copy(handle: str, now: int, created: int = start) -> None:
        keys = [f"upak:sessions:{{u1}}:s:{handle}", "upak:sessions:{u1}:index"]
        reply = [str(created).encode(), str(now).encode(), str(start + 86_400_000).encode()]
        store.remember(RESOLVE, keys, Use(handle, now, 3_600_000), [*reply, b"", b""])

    for n in range(100):
        copy(f"h{n:02d}", start)
    decoded: list[int] = []
    real = host_module._zset
    monkeypatch.setattr(host_module, "_zset", lambda body: decoded.append(1) or real(body))
    for n in range(100):
        copy(f"h{n:02d}", start + 1_000)  # seen again: the index already has it
    assert decoded == []
    copy("h100", start + 2_000)  # a session the index lacks is added to it...
    copy("h00", start + 3_000, created=start + 5)  # ...and a changed score is changed
    index = HostData(store.tier).zrange_withscores("upak:sessions:{u1}:index")
    assert len(index) == 101 and dict(index)[b"h00"] == start + 5

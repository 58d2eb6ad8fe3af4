"""The host tier: a Redis-shaped keyspace every worker process of one host shares.

While Redis is away, the workers of a host should answer as one: a logout on one worker ends
the session on all of them, and a rate limit counts every worker's requests. Process memory
cannot do that; this tier can. It is an SQLite file in WAL mode on a tmpfs path (RAM, never a
disk), and it runs each operation's existing memory twin unchanged: `HostData` is a
`MemoryData` whose keys are read from the file on first use and whose changed keys are
written back when the call ends, all inside one write transaction. There is no third copy of
any operation's logic.

Write transactions are serialised with `flock` on a lock file rather than SQLite's busy
handler (which sleeps a millisecond or more per collision). The lock is tried without
blocking first, then polled until `lock_timeout` s (0.2 s: a holder preempted on a loaded
host must not count as stuck, and a stuck one costs a call no more than that); a tier that
cannot be locked in time (its holder stopped) makes `HostStore` serve that call from process
memory, the "none" tier.
A process that dies releases its locks with it, and SQLite's WAL recovers its half-written
transaction, so a crash leaves no stale lock.

Stale state: the tier records the kernel's boot id and is wiped when opened under another
boot. Each live process holds a shared lock on a "members" file; the first process to open a
tier nobody holds drops the copies mirrored from Redis (they may be stale) but keeps the
rows written during an outage, which are still owed to Redis.

Memory is bounded in bytes, with a separate budget for rate-limit counters (keys under a
`ratelimit` namespace), so a flood of client addresses cannot evict sessions or replay
claims. Past its budget a namespace loses its soonest-expiring rows first (rows without a
TTL last), which are the rows that were about to stop mattering anyway.

Values are encoded in a small tagged format (hashes as msgpack maps of bytes; never pickle or
marshal, which are unsafe on a crafted file); a row that does not decode is treated as absent
and logged once.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import sqlite3
import struct
import time
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from itertools import accumulate
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from upak.store.conditions import Condition
from upak.store.journal import (
    EXPENDABLE,
    ORDINARY,
    Entry,
    Journal,
    MemoryJournal,
    Outage,
    decode_call,
    encode_call,
    kind_of,
)
from upak.store.memory import (
    NOT_SERVED,
    Clock,
    IntLog,
    KeyRegistry,
    MemoryData,
    MemoryStore,
    _ZSet,
    to_bytes,
)
from upak.store.operation import NO_ARGS, Mode, NoArgs, Operation, journaled_operation

A = TypeVar("A")
T = TypeVar("T")
log = logging.getLogger(__name__)

MAIN = "main"
RATELIMIT = "ratelimit"
CACHE = "cache"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_LEN = struct.Struct(">I")
_pack_map = partial(msgpack.packb, use_bin_type=True)
_SCORE = struct.Struct(">d")


# --- where the tier lives ---


def default_root() -> Path:
    """`$RUNTIME_DIRECTORY` or `$XDG_RUNTIME_DIR` under `upak/`, else `/dev/shm/upak-<uid>/`:
    all of them tmpfs on a systemd host, so the tier is RAM and gone at reboot."""
    for variable in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        value = os.environ.get(variable, "").split(":")[0]
        if value:
            return Path(value) / "upak"
    # /dev/shm is shared by every user: HostTier refuses a directory another user made.
    return Path(f"/dev/shm/upak-{os.getuid()}")  # noqa: S108


def tier_name(target: str, key_prefix: str) -> str:
    """A file name for the tier of one Redis target and key prefix. `target` must say which
    Redis (host:port/db, unix path, sentinel service, cluster seed) and never its password:
    two services of different targets or prefixes never share a tier."""
    digest = hashlib.sha256(f"{target}\0{key_prefix}".encode()).hexdigest()[:24]
    return f"tier-{digest}"


def namespace_of(key: str) -> str:
    """Which byte budget a key counts against: rate-limit counters and cache entries have
    their own. (A cache key always holds its hash tag, `cache:{e:…}` / `cache:{t:…}`, and a
    key prefix may not hold braces, so no other key is taken for one.)"""
    if ":ratelimit:" in key or key.startswith("ratelimit:"):
        return RATELIMIT
    if ":cache:{" in key or key.startswith("cache:{"):
        return CACHE
    return MAIN


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:  # not Linux: no boot id to compare, the tier is trusted as found
        return ""


# --- the value encoding ---


class UndecodableRow(ValueError):
    """A row in the tier is not in the format this module writes."""


def _field(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


def encode(value: Any, expires_at_ms: int | None) -> bytes:
    """One value and its expiry as bytes: tag, expiry (-1 = none), then the payload."""
    head = struct.pack(">q", -1 if expires_at_ms is None else expires_at_ms)
    if isinstance(value, bytes):
        return b"b" + head + value
    if isinstance(value, KeyRegistry):
        pairs = ((k.encode(), v.encode()) for k, v in value.items())
        return b"o" + head + b"".join(_field(k) + _field(v) for k, v in pairs)
    if isinstance(value, _ZSet):
        # Counts, lengths and scores packed as arrays, then the members: one struct call each
        # way instead of two per member (a user's index has up to 100, decoded per copy).
        n = len(value)
        lengths = struct.pack(f">I{n}I{n}d", n, *map(len, value), *value.values())
        return b"Z" + head + lengths + b"".join(value)
    if isinstance(value, dict):
        # A hash (a session: five fields, decoded on every lookup) as a msgpack map of
        # bytes: decoded in C, which a field-by-field loop took twenty times as long to do.
        return b"m" + head + _pack_map(value)
    if isinstance(value, set):
        return b"s" + head + b"".join(_field(m) for m in sorted(value))
    if isinstance(value, IntLog):
        return b"Q" + head + b"".join(struct.pack(">q", item) for item in value)
    if isinstance(value, list):
        return b"l" + head + b"".join(_field(item) for item in value)
    raise TypeError(f"the host tier cannot store a {type(value).__name__}")


def decode(blob: bytes) -> tuple[Any, int | None]:
    """The inverse of `encode`; raises UndecodableRow on anything else."""
    try:
        tag, (expires,) = blob[:1], struct.unpack_from(">q", blob, 1)
        body = memoryview(blob)[9:]
        if tag == b"b":
            value: Any = bytes(body)
        elif tag == b"m":
            value = _map(body)
        elif tag == b"Z":
            value = _zset(body)
        elif tag in (b"Q", b"q"):
            if len(body) % 8:
                raise UndecodableRow("a log of a partial number")
            items = [item for (item,) in struct.iter_unpack(">q", body)]
            # "q": written by workers whose twin kept the log oldest first (before the log
            # took the script's order); a tier on the same boot may still hold such rows.
            value = IntLog(reversed(items) if tag == b"q" else items)
        else:
            items = _fields(body, scored=tag == b"z")
            if tag == b"o":
                if len(items) % 2:
                    raise UndecodableRow("a registry with an odd number of fields")
                names = [item.decode() for item in items]
                value = KeyRegistry(zip(names[::2], names[1::2], strict=True))
            elif tag == b"h":
                if len(items) % 2:
                    raise UndecodableRow("a hash with an odd number of fields")
                value = dict(zip(items[::2], items[1::2], strict=True))
            elif tag == b"z":  # a sorted set as written before "Z" (an older worker)
                value = _ZSet(zip(items[::2], items[1::2], strict=True))
            elif tag == b"s":
                value = set(items)
            elif tag == b"l":
                value = list(items)
            else:
                raise UndecodableRow(f"unknown tag {tag!r}")
    except (struct.error, ValueError) as exc:
        raise UndecodableRow(str(exc)) from None
    return value, None if expires == -1 else expires


def _map(body: memoryview) -> dict[bytes, bytes]:
    try:
        value = msgpack.unpackb(body, raw=True, strict_map_key=False, use_list=False)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise UndecodableRow(f"a hash that is not a msgpack map ({type(exc).__name__})") from None
    if type(value) is not dict or not all(
        type(f) is bytes and type(v) is bytes for f, v in value.items()
    ):
        raise UndecodableRow("a hash whose fields are not bytes")
    return value


def _zset(body: memoryview) -> _ZSet:
    (n,) = struct.unpack_from(">I", body)
    lengths = struct.unpack_from(f">{n}I", body, 4)
    scores = struct.unpack_from(f">{n}d", body, 4 + 4 * n)
    at = 4 + 12 * n
    if at + sum(lengths) != len(body):
        raise UndecodableRow("a sorted set whose members do not add up to its row")
    members = []
    for length in lengths:
        members.append(bytes(body[at : at + length]))
        at += length
    return _ZSet(zip(members, scores, strict=True))


def _fields(body: memoryview, scored: bool) -> list[Any]:
    items: list[Any] = []
    at = 0
    while at < len(body):
        (size,) = _LEN.unpack_from(body, at)
        at += 4
        if at + size > len(body):
            raise UndecodableRow("a field runs past the end of the row")
        items.append(bytes(body[at : at + size]))
        at += size
        if scored:
            items.append(_SCORE.unpack_from(body, at)[0])
            at += 8
    return items


# --- the shared file ---


@dataclass(frozen=True)
class Budgets:
    """Bytes the tier may hold per namespace (keys plus encoded values)."""

    main: int = 64 * 1024 * 1024
    ratelimit: int = 16 * 1024 * 1024
    cache: int = 16 * 1024 * 1024

    def of(self, namespace: str) -> int:
        if namespace == RATELIMIT:
            return self.ratelimit
        return self.cache if namespace == CACHE else self.main


class TierLocked(Exception):
    """The tier's write lock was not free within the deadline (its holder is stuck)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, expires INTEGER, size INTEGER NOT NULL,
    ns TEXT NOT NULL, mirrored INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS kv_expiry ON kv (ns, expires IS NULL, expires);
CREATE TABLE IF NOT EXISTS usage (ns TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, part TEXT NOT NULL, op TEXT NOT NULL,
    call BLOB NOT NULL, at_ms INTEGER NOT NULL, kind INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS journal_order ON journal (part);
CREATE INDEX IF NOT EXISTS journal_kind ON journal (part, kind);
CREATE TABLE IF NOT EXISTS journal_size (
    part TEXT PRIMARY KEY, n INTEGER NOT NULL, compact_at INTEGER NOT NULL);
"""

# The host's breaker: one 8-byte word per partition slot in a small shared file, read on
# every call while Redis is up (an mmap read, no system call, no lock). 0 is "on Redis";
# anything else packs the hysteresis hold's end (monotonic ms) and the condition.
FLAG_SLOTS = 512
_FLAG = struct.Struct("<q")
_CONDITIONS = list(Condition)


def flag_slot(partition: str) -> int:
    """A partition's word in the flags file. Two partitions that share a slot degrade
    together: more degraded than needed, never less."""
    return zlib.crc32(partition.encode()) % FLAG_SLOTS


def pack_outage(outage: Outage) -> int:
    try:
        index = _CONDITIONS.index(Condition(outage.condition))
    except ValueError:
        index = _CONDITIONS.index(Condition.UNREACHABLE)
    return (max(0, int(outage.hold_until * 1000)) << 5) | (index + 1)


def unpack_outage(word: int) -> Outage | None:
    if word <= 0:
        return None
    index = (word & 31) - 1
    condition = _CONDITIONS[index] if 0 <= index < len(_CONDITIONS) else Condition.UNREACHABLE
    return Outage(str(condition), (word >> 5) / 1000)


_ONE_ROW = "SELECT key, value FROM kv WHERE key = ?"


@cache
def _rows_query(n: int) -> str:
    """One statement that reads `n` keys' rows: a UNION ALL of key lookups (`IN (…)` builds
    an ephemeral table per call, which costs more than a few lookups)."""
    if n > 16:
        return f"SELECT key, value FROM kv WHERE key IN ({', '.join('?' * n)})"  # noqa: S608
    return " UNION ALL ".join([_ONE_ROW] * n)


# In place (the row keeps its place in the key's b-tree), not INSERT OR REPLACE's delete and
# insert.
_UPSERT_ROW = (
    "INSERT INTO kv VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET"
    " value = excluded.value, expires = excluded.expires, size = excluded.size,"
    " ns = excluded.ns, mirrored = excluded.mirrored"
)
_ADD_USAGE = (
    "INSERT INTO usage VALUES (?1, ?2) ON CONFLICT(ns) DO UPDATE SET bytes = bytes + ?2"
    " RETURNING bytes"
)

# What `HostTier.pending` returns for a journal row it cannot replay: its write-back is a
# no-op (`replay_args` gives None), so the row is cleared with the batch around it.
_SKIPPED: Operation[NoArgs, Any] = Operation(
    name="journal.unreadable",
    lua="return 0",
    args=NoArgs,
    memory=lambda data, keys, args: 0,
    replay_args=lambda args, elapsed_ms: None,
)


class HostTier:
    """One tier file, its write lock and this process's membership of it."""

    def __init__(
        self,
        root: Path,
        name: str,
        budgets: Budgets = Budgets(),
        lock_timeout: float = 0.2,
        clock: Clock = time.time,
    ) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if root.stat().st_uid != os.getuid():
            raise PermissionError(
                f"{root} belongs to another user; set UPAK_FALLBACK_PATH to a private directory"
            )
        os.chmod(root, 0o700)
        self.path = root / f"{name}.sqlite"
        self.budgets = budgets
        self.lock_timeout = lock_timeout
        self.clock = clock
        self._undecodable: set[str] = set()
        self.root, self.name = root, name
        self.dropped: dict[str, int] = {}  # per partition: journaled calls the cap dropped here
        self._unknown_ops: set[str] = set()
        self._writer_fds: dict[int, int] = {}
        self._offsets: dict[str, int] = {}
        self._last_outage: tuple[int, Outage | None] = (0, None)
        self._lock_fd = os.open(root / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._members_fd = os.open(root / f"{name}.members", os.O_RDWR | os.O_CREAT, 0o600)
        self._flags_fd = os.open(root / f"{name}.flags", os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._flags_fd).st_size < FLAG_SLOTS * _FLAG.size:
            os.ftruncate(self._flags_fd, FLAG_SLOTS * _FLAG.size)
        self._flags = mmap.mmap(self._flags_fd, FLAG_SLOTS * _FLAG.size)
        self.db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=lock_timeout
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")  # tmpfs: there is no disk to sync to
        with self.locked():
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self.db.execute(statement)  # executescript would COMMIT the lock's transaction
            self._check_boot()
            self._join()

    def _check_boot(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE name='boot_id'").fetchone()
        current = boot_id()
        if row is not None and row[0] != current:
            log.warning("host tier %s is from another boot; wiping it", self.path.name)
            for table in ("kv", "usage", "journal", "journal_size"):
                self.db.execute(f"DELETE FROM {table}")  # noqa: S608 - names from this module
            # A hold is a point on the old boot's monotonic clock: meaningless now.
            self._flags[:] = bytes(len(self._flags))
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('boot_id', ?)", (current,))

    def _join(self) -> None:
        """Hold the members file shared for this process's life. If nobody held it, this is
        the first process: mirrored copies may be stale, drop them (outage rows stay)."""
        try:
            fcntl.flock(self._members_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            first = True
        except BlockingIOError:
            first = False
        if first:
            # Cache entries too: they are not owed to Redis, and a service restarted (maybe
            # with other code) must not serve what the last one rendered.
            self.db.execute("DELETE FROM kv WHERE mirrored = 1 OR ns = ?", (CACHE,))
            self._recount()
        fcntl.flock(self._members_fd, fcntl.LOCK_SH)

    def _recount(self) -> None:
        self.db.execute("DELETE FROM usage")
        self.db.execute("INSERT INTO usage SELECT ns, sum(size) FROM kv GROUP BY ns")

    def close(self) -> None:
        self.db.close()
        self._flags.close()
        for fd in (self._lock_fd, self._members_fd, self._flags_fd, *self._writer_fds.values()):
            os.close(fd)
        self._writer_fds.clear()

    # --- the host's breaker, per partition ---

    def outage(self, partition: str) -> Outage | None:
        # On every call while Redis is up: one dict lookup and one 8-byte read (during an
        # outage, the same word as the last call's is not unpacked again).
        offset = self._offsets.get(partition)
        if offset is None:
            offset = self._offsets[partition] = flag_slot(partition) * _FLAG.size
        word = _FLAG.unpack_from(self._flags, offset)[0]
        if word == 0:
            return None
        last = self._last_outage
        if last[0] != word:
            last = self._last_outage = (word, unpack_outage(word))
        return last[1]

    def set_outage(self, partition: str, outage: Outage | None) -> None:
        word = 0 if outage is None else pack_outage(outage)
        _FLAG.pack_into(self._flags, flag_slot(partition) * _FLAG.size, word)

    @contextmanager
    def writer(self, partition: str) -> Iterator[bool]:
        """Whether this process is the one writing `partition`'s journal back: an flock per
        partition slot, tried without waiting, released by the kernel if the writer dies."""
        slot = flag_slot(partition)
        fd = self._writer_fds.get(slot)
        if fd is None:
            path = self.root / f"{self.name}.writer-{slot}"
            fd = self._writer_fds[slot] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    # --- the host's journal (call `append` inside `locked()`) ---

    def append(self, entry: Entry, max_entries: int) -> None:
        """Journal one call, making room as `MemoryJournal` does once `max_entries` are held:
        touches first, then the oldest non-revocations, never a revocation."""
        part = entry.partition
        row = self.db.execute(
            "SELECT n, compact_at FROM journal_size WHERE part = ?", (part,)
        ).fetchone()
        held, compact_at = row if row else (0, max_entries)
        if held >= compact_at:
            tenth = max(1, max_entries // 10)
            room = tenth
            for kind in (EXPENDABLE, ORDINARY):
                if room:
                    room -= self.db.execute(
                        "DELETE FROM journal WHERE seq IN (SELECT seq FROM journal"
                        " WHERE part = ? AND kind = ? ORDER BY seq LIMIT ?)",
                        (part, kind, room),
                    ).rowcount
            freed = tenth - room
            self.dropped[part] = self.dropped.get(part, 0) + freed
            held -= freed
            compact_at = max(max_entries, held + tenth)
        self.db.execute(
            "INSERT INTO journal (part, op, call, at_ms, kind) VALUES (?, ?, ?, ?, ?)",
            (
                part,
                entry.op.name,
                encode_call(entry.keys, entry.op.argv(entry.args)),
                entry.at_ms,
                kind_of(entry.op),
            ),
        )
        self.db.execute(
            "INSERT OR REPLACE INTO journal_size VALUES (?, ?, ?)", (part, held + 1, compact_at)
        )

    def pending(self, partition: str, limit: int) -> list[Entry]:
        """The oldest `limit` journaled calls of `partition`. An entry that does not decode,
        or names an operation this process does not have, is logged and skipped."""
        rows = self.db.execute(
            "SELECT seq, op, call, at_ms FROM journal WHERE part = ? ORDER BY seq LIMIT ?",
            (partition, limit),
        ).fetchall()
        entries = []
        for seq, name, call, at_ms in rows:
            op = journaled_operation(name)
            try:
                keys, argv = decode_call(call)
                args = None if op is None else op.record_of(argv)
            except (ValueError, TypeError) as exc:  # TypeError: not the record's fields
                log.error("host tier journal entry %d does not decode (%s); dropped", seq, exc)
                op = None
            if op is None:
                if name not in self._unknown_ops:
                    self._unknown_ops.add(name)
                    log.error("host tier journal names an unknown operation %r; dropped", name)
                entries.append(Entry(_SKIPPED, (), NO_ARGS, at_ms, partition, seq))
                continue
            entries.append(Entry(op, keys, args, at_ms, partition, seq))
        return entries

    def done(self, partition: str, upto_seq: int) -> None:
        with self.locked():
            gone = self.db.execute(
                "DELETE FROM journal WHERE part = ? AND seq <= ?", (partition, upto_seq)
            ).rowcount
            self.db.execute(
                "UPDATE journal_size SET n = max(0, n - ?) WHERE part = ?", (gone, partition)
            )

    def journal_size(self, partition: str) -> int:
        row = self.db.execute("SELECT n FROM journal_size WHERE part = ?", (partition,)).fetchone()
        return row[0] if row else 0

    # --- the write lock ---

    def locked(self) -> _Locked:
        return _Locked(self)

    def acquire(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.0001
        while True:
            time.sleep(pause)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TierLocked(f"host tier {self.path.name} stayed locked") from None
                pause = min(pause * 2, 0.002)

    def release(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # --- rows ---

    def load(self, key: str) -> tuple[Any, int | None] | None:
        row = self.load_row(key)
        return None if row is None else row[1:]

    def load_row(self, key: str) -> tuple[bytes, Any, int | None] | None:
        """The row's bytes as stored, its value and its expiry; None if absent or undecodable."""
        blob = self.load_blob(key)
        if blob is None:
            return None
        try:
            return (blob, *decode(blob))
        except UndecodableRow as exc:
            self.note_undecodable(key, exc)
            return None

    def load_blob(self, key: str) -> bytes | None:
        """The row's bytes as stored (not decoded); None if absent."""
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def load_rows(self, keys: Sequence[str]) -> list[tuple[str, bytes]]:
        """The stored bytes of those of `keys` that are present, in one statement: one read
        snapshot without a transaction around it."""
        if not keys:
            return []
        return self.db.execute(_rows_query(len(keys)), tuple(keys)).fetchall()

    def note_undecodable(self, key: str, exc: UndecodableRow) -> None:
        if key not in self._undecodable:
            self._undecodable.add(key)
            log.warning("host tier row %r does not decode (%s); treated as absent", key, exc)

    def store(
        self, key: str, blob: bytes | None, mirrored: bool, old_size: int | None = None
    ) -> int | None:
        """Write (or, with None, delete) one row and keep the namespace's byte count.
        `old_size` is the row's size as stored (0: absent), when the caller read it in this
        transaction; else it is read. The namespace's new total when this write changed it."""
        namespace = namespace_of(key)
        if old_size is None:
            old = self.db.execute("SELECT size FROM kv WHERE key = ?", (key,)).fetchone()
            old_size = old[0] if old else 0
        delta = -old_size
        if blob is None:
            if old_size:
                self.db.execute("DELETE FROM kv WHERE key = ?", (key,))
        else:
            size = len(key) + len(blob)
            delta += size
            expires = struct.unpack_from(">q", blob, 1)[0]
            self.db.execute(
                _UPSERT_ROW,
                (key, blob, None if expires == -1 else expires, size, namespace, int(mirrored)),
            )
        if not delta:
            return None
        (total,) = self.db.execute(_ADD_USAGE, (namespace, delta)).fetchone()
        return total  # type: ignore[no-any-return]

    def drop_cache(self) -> None:
        """Inside a locked transaction: forget every cache entry and tag version. They are
        valid within one outage only (while Redis is up every invalidation goes to Redis,
        never here), so each outage starts from none."""
        self.db.execute("DELETE FROM kv WHERE ns = ?", (CACHE,))
        self.db.execute("DELETE FROM usage WHERE ns = ?", (CACHE,))

    def used(self, namespace: str) -> int:
        row = self.db.execute("SELECT bytes FROM usage WHERE ns = ?", (namespace,)).fetchone()
        return row[0] if row else 0

    def enforce(self, used: dict[str, int]) -> None:
        """Evict the soonest-expiring rows of each namespace over its budget (`used`: the
        bytes of the namespaces a transaction's writes changed, after them)."""
        for namespace, total in used.items():
            over = total - self.budgets.of(namespace)
            while over > 0:
                doomed = self.db.execute(
                    "SELECT key, size FROM kv WHERE ns = ? ORDER BY expires IS NULL, expires"
                    " LIMIT 64",
                    (namespace,),
                ).fetchall()
                if not doomed:
                    break
                for key, size in doomed:
                    if over <= 0:
                        break
                    self.store(key, None, mirrored=False, old_size=size)
                    over -= size


class _Locked:
    def __init__(self, tier: HostTier) -> None:
        self.tier = tier

    def __enter__(self) -> HostTier:
        self.tier.acquire()
        try:
            self.tier.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.tier.release()
            raise
        return self.tier

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        try:
            self.tier.db.execute("ROLLBACK" if kind else "COMMIT")
        finally:
            self.tier.release()


# --- the twin's view of the tier ---


class _Writes:
    def __repr__(self) -> str:
        return "WRITES"


_WRITES: Any = _Writes()  # `_read_only`'s answer when the twin must run under the lock
# After an operation's lock-free try wrote, its next calls of this many take the lock at once.
READ_FIRST_BACKOFF = 32


class _NotPreloaded(Exception):
    """A twin reading without a transaction asked for a key its one SELECT did not load."""


class HostData(MemoryData):
    """A MemoryData that reads keys from the tier on first use and, at `commit`, writes back
    the keys whose value or expiry changed. Live only within one transaction (locked, for
    one that writes), or, with `preload` (sealed), one SELECT of the call's keys and no
    transaction.

    A row is decoded only when the twin uses its value: a user's session index (up to
    MAX_SESSIONS_PER_USER members) that a mirror write only checks (is the session in it,
    with this score? until when does it live?) is answered from its stored bytes, and
    never decoded nor rewritten."""

    bounded_in_bytes = True

    def __init__(
        self,
        tier: HostTier,
        mirrored: bool = False,
        preload: Sequence[str] | None = None,
        sealed: bool = True,
    ) -> None:
        super().__init__(clock=tier.clock, max_keys=1 << 62)
        self.tier = tier
        self.mirrored = mirrored
        # The stored bytes of every key read (None: absent), what `commit` compares with...
        self._original: dict[str, bytes | None] = {}
        # ...those not decoded yet (the twin has not used the value)...
        self._undecoded: dict[str, bytes] = {}
        # ...and those whose stored row did not decode (absent to the twin; size unknown).
        self._unreadable: set[str] = set()
        # A copy of each decoded value and its expiry: a key the twin only read (a user's
        # session index, re-added to unchanged) is told unchanged by comparing with it, in C,
        # rather than by encoding it again.
        self._snapshots: dict[str, tuple[Any, int | None]] = {}
        self._packed: dict[str, _PackedZSet | None] = {}  # the rows `_packed_zset` parsed
        # Sealed: no transaction is open, so a key `preload` did not read cannot be read in
        # its snapshot (`_NotPreloaded`). Unsealed, `preload` only saves statements.
        self._sealed = preload is not None and sealed
        if preload is not None:
            rows = dict(tier.load_rows(preload))
            for key in preload:
                self._keep(key, rows.get(key))

    def _keep(self, key: str, blob: bytes | None) -> None:
        self._original[key] = blob
        if blob is not None:
            self._undecoded[key] = blob

    def _load(self, key: str) -> None:
        """The key's stored bytes, read once (not decoded)."""
        if key in self._original:
            return
        if self._sealed:
            raise _NotPreloaded(key)
        self._keep(key, self.tier.load_blob(key))

    def _fault_in(self, key: str) -> None:
        self._load(key)
        blob = self._undecoded.pop(key, None)
        if blob is None:
            return
        try:
            value, expires = decode(blob)
        except UndecodableRow as exc:
            self.tier.note_undecodable(key, exc)
            self._original[key] = None
            self._unreadable.add(key)
            return
        self._keys[key] = [value, expires]
        self._snapshots[key] = (value if isinstance(value, bytes) else type(value)(value), expires)

    def entry(self, key: str, kind: type | None = None) -> Any:
        self._fault_in(key)
        return super().entry(key, kind)

    def put(self, key: str, value: Any, expires_at_ms: int | None = None, keep_ttl: bool = False):
        self._fault_in(key)
        super().put(key, value, expires_at_ms, keep_ttl)

    def keys(self) -> list[str]:
        if self._sealed:
            raise _NotPreloaded("*")
        for (key,) in self.tier.db.execute("SELECT key FROM kv").fetchall():
            self._fault_in(key)
        return super().keys()

    # --- a sorted set answered from its stored bytes, where they suffice ---

    def _packed_zset(self, key: str) -> _PackedZSet | None:
        """The key's sorted set as stored, while it is not decoded, is live and its row
        parses; else None (the twin's command decodes it, and sees what the row is)."""
        self._load(key)
        blob = self._undecoded.get(key)
        if blob is None or blob[:1] != b"Z":
            return None
        packed = self._packed.get(key)
        if packed is None or packed.blob is not blob:
            packed = self._packed[key] = _PackedZSet.parse(blob)
        if packed is None or (packed.expires is not None and packed.expires <= self.now_ms()):
            return None  # expired: the decoded path deletes it, as Redis would
        return packed

    def pttl(self, key: str) -> int:
        packed = self._packed_zset(key)
        if packed is None:
            return super().pttl(key)
        return -1 if packed.expires is None else max(packed.expires - self.now_ms(), 0)

    def zadd(self, key: str, mapping: dict[Any, float]) -> int:
        packed = self._packed_zset(key)
        if packed is not None and all(
            packed.score(to_bytes(member)) == float(score) for member, score in mapping.items()
        ):
            return 0  # every member is there with this score: nothing changes
        return super().zadd(key, mapping)

    # --- the end of the call ---

    def changed(self) -> bool:
        """Whether `commit` would write anything."""
        return next(self._changes(), None) is not None

    def commit(self) -> None:
        used: dict[str, int] = {}
        for key, before, after in self._changes():
            old_size = None if key in self._unreadable else _row_size(key, before)
            total = self.tier.store(key, after, self.mirrored, old_size)
            if total is not None:
                used[namespace_of(key)] = total
        self.tier.enforce(used)

    def _changes(self) -> Iterator[tuple[str, bytes | None, bytes | None]]:
        """Each key whose value or expiry changed: its stored bytes, its new bytes (None:
        absent). A key never decoded is unchanged."""
        undecoded = self._undecoded
        for key, before in self._original.items():
            if key in undecoded:
                continue
            slot = self._keys.get(key)
            if slot is not None and _unchanged(slot, self._snapshots.get(key)):
                continue
            after = None if slot is None else encode(slot[0], slot[1])
            if after != before:
                yield key, before, after
        for key, slot in self._keys.items():
            if key not in self._original:  # pragma: no cover - put always faults in first
                yield key, None, encode(slot[0], slot[1])


def _row_size(key: str, blob: bytes | None) -> int:
    return 0 if blob is None else len(key) + len(blob)


class _PackedZSet:
    """An encoded sorted set ("Z" row) read in place: its members are stored end to end
    after their lengths and scores, so a match of a member's bytes is that member only where
    a member starts and is that long. One struct call per array, no member decoded."""

    __slots__ = ("blob", "expires", "lengths", "n", "starts")

    def __init__(self, blob: bytes, expires: int | None, lengths: tuple[int, ...]) -> None:
        self.blob, self.expires, self.lengths, self.n = blob, expires, lengths, len(lengths)
        self.starts = list(accumulate(lengths[:-1], initial=13 + 12 * len(lengths)))

    @classmethod
    def parse(cls, blob: bytes) -> _PackedZSet | None:
        try:
            (expires,) = struct.unpack_from(">q", blob, 1)
            (n,) = struct.unpack_from(">I", blob, 9)
            lengths = struct.unpack_from(f">{n}I", blob, 13)
        except struct.error:
            return None
        if n == 0 or 13 + 12 * n + sum(lengths) != len(blob):
            return None  # empty, or not what `encode` writes: decoded by the caller
        return cls(blob, None if expires == -1 else expires, lengths)

    def score(self, member: bytes) -> float | None:
        blob, starts, n = self.blob, self.starts, self.n
        found = blob.find(member, starts[0])
        while found != -1:
            i = bisect_left(starts, found)
            if i < n and starts[i] == found and self.lengths[i] == len(member):
                return float(_SCORE.unpack_from(blob, 13 + 4 * n + 8 * i)[0])
            found = blob.find(member, found + 1)
        return None


def _unchanged(slot: list[Any], snapshot: tuple[Any, int | None] | None) -> bool:
    if snapshot is None:
        return False
    value, expires = snapshot
    return slot[1] == expires and type(slot[0]) is type(value) and slot[0] == value


def _remember(
    op: Operation[A, Any], reply: Any, data: MemoryData, keys: Sequence[str], args: A
) -> None:
    assert op.remember is not None
    op.remember(data, keys, args, reply)


class HostStore(MemoryStore):
    """The Store served from the host tier; a call that cannot lock the tier in time is
    served from this process's memory instead (the "none" tier), as before the tier.

    It is a MemoryStore to its callers (Mode.MEMORY, a `data` keyspace to inspect); `data`
    reads the tier outside any transaction, and assigning a MemoryData adopts its clock.
    The outage (the host's breaker), the journal and the write-back's writer live in the
    tier, so the workers of the host degrade, journal and write back as one."""

    shared_by = "host"

    def __init__(
        self, tier: HostTier, remember_interval: float = 5.0, caches: bool = False
    ) -> None:
        self.tier = tier
        # Serve the cache during an outage (`Fallback.HOST`): only when this host is the whole
        # service (RATE_LIMIT_FALLBACK_DIVISOR = 1), so every invalidation lands in this tier.
        self.caches = caches
        self.local = MemoryData(clock=lambda: self.tier.clock())
        # Calls served by `local` (tier locked) that must still reach Redis: this process's.
        self.journal = MemoryJournal()
        # The tier's journal holds about one entry per 512 bytes of the main budget.
        self.journal_max = max(1_000, tier.budgets.main // 512)
        self.unlocked_calls = 0
        # Per operation: how many more calls go straight to the lock (see `execute`).
        self._writers: dict[str, int] = {}
        self._served_locally = False  # the last locked call found the tier stuck
        self._start_memo(remember_interval)
        # Revocations Redis answered that the tier was too busy to take (see `remember`).
        self._owed_revocations: list[tuple[Operation[Any, Any], tuple[str, ...], Any, Any]] = []

    @property  # type: ignore[override]
    def data(self) -> MemoryData:
        return HostData(self.tier)

    @data.setter
    def data(self, value: MemoryData) -> None:
        self.tier.clock = value._clock

    @property
    def mode(self) -> Mode:
        return Mode.MEMORY

    def execute(
        self,
        op: Operation[A, Any],
        keys: Sequence[str],
        args: A,
        entry: Entry | None = None,
        twin: Callable[[MemoryData, Sequence[str], A], Any] | None = None,
        mirrored: bool = False,
    ) -> Any:
        """Run `twin` (by default the op's memory half) on the tier in one transaction, and
        journal `entry` in the same one. A call that journals nothing is first run on a read
        snapshot, without the lock (`_read_only`): a session lookup changes nothing, and
        the lock costs more than the lookup. An operation whose last such try wrote (a rate
        limit's decision records itself) goes straight to the lock for its next
        `READ_FIRST_BACKOFF` calls, so a writer does not pay for the try on every call."""
        twin = twin or op.memory
        if entry is None and not self._owed_revocations and not self._served_locally:
            skip = self._writers.get(op.name, 0)
            if skip:
                self._writers[op.name] = skip - 1
            else:
                reply = self._read_only(twin, keys, args)
                if reply is not _WRITES:
                    return reply
                self._writers[op.name] = READ_FIRST_BACKOFF
        try:
            return self._in_tier(twin, keys, args, entry, mirrored)
        except TierLocked:
            self._note_locked(op)
            # Until the tier locks again, this process's calls are served by its own memory,
            # reads too: they must see the writes it served there.
            self._served_locally = True
            return self._run_on(self.local, twin, keys, args, entry)

    def _in_tier(
        self,
        twin: Callable[[MemoryData, Sequence[str], A], Any],
        keys: Sequence[str],
        args: A,
        entry: Entry | None,
        mirrored: bool,
    ) -> Any:
        with self.tier.locked():
            self._served_locally = False
            if self._owed_revocations:
                self._apply_owed_revocations()
            data = HostData(self.tier, mirrored=mirrored, preload=keys, sealed=False)
            reply = twin(data, keys, args)
            data.commit()
            if entry is not None:
                self.tier.append(entry, self.journal_max)
            return reply

    def execute_cached(
        self, op: Operation[A, Any], keys: Sequence[str], args: A, partition: str
    ) -> Any:
        """Run a `Fallback.HOST` operation (the cache) in the tier, in one transaction that
        first checks the host is still down for `partition`: `mark_up` drops the cache's rows
        and clears the outage under the same lock, so no entry written during an outage
        survives into the time Redis serves (when invalidations go to Redis only). A busy
        tier is not waited for and not replaced by process memory: that call's caching is off."""
        if not self.caches or self.tier.outage(partition) is None:
            return NOT_SERVED
        reply = self._read_only(op.memory, keys, args)
        if reply is not _WRITES:
            return reply
        try:
            with self.tier.locked():
                if self.tier.outage(partition) is None:
                    return NOT_SERVED  # the host went back to Redis under this worker
                if self._owed_revocations:
                    self._apply_owed_revocations()
                data = HostData(self.tier)
                reply = op.memory(data, keys, args)
                data.commit()
                return reply
        except TierLocked:
            self._note_locked(op, "not cached (the tier was busy)")
            return NOT_SERVED

    def _read_only(
        self, twin: Callable[[MemoryData, Sequence[str], A], Any], keys: Sequence[str], args: A
    ) -> Any:
        """The twin on a read snapshot of the tier, without the write lock (WAL readers never
        wait): a cache hit or a session lookup reads a row or two, and taking the lock for
        them cost more than the rest of the call. `_WRITES` when the twin changed anything:
        the caller runs it again under the lock. (A read racing `mark_up` sees the outage's
        rows or none.)

        The snapshot is one SELECT of the call's keys, which SQLite runs as one read
        transaction: every row the twin sees is of one moment, and nothing is begun or
        rolled back around it. A twin that reads a key the call did not name (the sessions a
        user's index lists) is run again inside a read transaction that holds a snapshot
        across its statements."""
        try:
            data = HostData(self.tier, preload=keys)
            reply = twin(data, keys, args)
        except _NotPreloaded:
            data = HostData(self.tier)
            self.tier.db.execute("BEGIN")
            try:
                reply = twin(data, keys, args)
                changed = data.changed()
            finally:
                self.tier.db.execute("ROLLBACK")
            return _WRITES if changed else reply
        return _WRITES if data.changed() else reply

    def _apply_owed_revocations(self) -> None:
        """Inside a tier transaction: the revocations the tier could not take when Redis
        answered them, oldest first, before anything else reads the tier."""
        owed, self._owed_revocations = self._owed_revocations, []
        for op, keys, args, reply in owed:
            data = HostData(self.tier, mirrored=True)
            _remember(op, reply, data, keys, args)
            data.commit()

    def _note_locked(
        self, op: Operation[Any, Any], what: str = "served from process memory"
    ) -> None:
        self.unlocked_calls += 1
        log.warning("host tier busy past %.3f s; %s %s", self.tier.lock_timeout, op.name, what)

    def remember(self, op: Operation[A, Any], keys: Sequence[str], args: A, reply: Any) -> None:
        """The mirror, written into the tier only when Redis's answer changed or at most once
        per `remember_interval` s (a per-process memo), so the request path while Redis is up
        stays cheap. A revocation (`Operation.precious`) is applied at once, every time: every
        worker's outage copy must end with it.

        No copy is ever kept in process memory, so no other worker's revocation has a
        per-process copy to reach. A copy the tier could not take in time is skipped (not
        memoised: the next call tries again); a revocation it could not take is owed, and
        applied first in this worker's next tier transaction, before anything reads it."""
        assert op.remember is not None
        if self._memoised(op, keys, reply):
            return
        try:
            self._in_tier(partial(_remember, op, reply), keys, args, None, mirrored=True)
        except TierLocked:
            if op.precious:
                self._note_locked(op, "owed to the tier: applied by this worker's next call")
                self._owed_revocations.append((op, tuple(keys), args, reply))
            else:
                self._note_locked(op, "not copied for an outage (the next call tries again)")
            return
        self._memoise(op, keys, reply)

    def _memo_clock(self) -> float:
        return self.tier.clock()

    # --- the outage, shared by the host's workers ---

    def outage(self, partition: str) -> Outage | None:
        return self.tier.outage(partition)

    def mark_down(self, partition: str, outage: Outage) -> None:
        try:
            with self.tier.locked():
                known = self.tier.outage(partition)
                if known is None:
                    # `mark_up` dropped them already; again here, in case the worker that
                    # marked up died between clearing the word and committing.
                    self.tier.drop_cache()
                if known is None or known.hold_until < outage.hold_until:
                    self.tier.set_outage(partition, outage)
        except TierLocked:
            # Degrading is always safe: set the word without the lock rather than not at all.
            self.tier.set_outage(partition, outage)

    def mark_up(self, partition: str, now: float) -> bool:
        if self.journal.size(partition):
            return False
        try:
            with self.tier.locked():
                outage = self.tier.outage(partition)
                if self.tier.journal_size(partition) or (
                    outage is not None and outage.hold_until > now
                ):
                    return False
                self.tier.drop_cache()
                self.tier.set_outage(partition, None)
        except TierLocked:
            return False
        self._memo.clear()  # the outage changed the copies: the next answers are copied again
        return True

    @contextmanager
    def writer(self, partition: str) -> Iterator[list[Journal]]:
        """This process's own journal always; the host's too when no other worker is
        writing it back (if that worker dies, its flock goes with it and the next probe of
        another worker takes over where it stopped)."""
        with self.tier.writer(partition) as leading:
            yield [self.journal, self.tier] if leading else [self.journal]

    def pending(self, partition: str) -> int:
        return self.journal.size(partition) + self.tier.journal_size(partition)

    def dropped(self, partition: str) -> int:
        return self.journal.dropped.get(partition, 0) + self.tier.dropped.get(partition, 0)

    async def run(self, op: Operation[A, T], keys: Sequence[str], args: A) -> T:
        return op.parse(self.execute(op, keys, args))

    async def ping(self) -> float | None:
        return None

    async def close(self) -> None:
        self.tier.close()

"""The write-back journal: the outage's calls that Redis must still see, in the order they ran.

A call the fallback accepted during an outage and that must outlive it (`Operation.writeback`:
logins, logouts, replay claims) is journaled in the same step that ran it, and replayed
against Redis when it is back (`FailoverStore._write_back`). Each journal is split by
*partition*, the one breaker it belongs to (a Redis, or one master's slot range on a
Cluster), so a range that recovered writes back its own calls and no other range's.

`MemoryJournal` is the process's own; the host tier keeps its journal in the tier file
(`upak.store.host`), so a worker killed mid-outage loses nothing and whichever worker of the
host writes back replays every worker's calls. Both cap their size the same way
(`compaction_order`): touches go first, then the oldest calls that are not revocations; a
revocation is never dropped.

An entry names its operation, and the operation is found again by that name
(`upak.store.operation.journaled_operation`): a journal that outlives its process (the tier
file) holds no code.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from upak.store.operation import Arg, Operation

# The journal's kinds, in the order a full journal drops them (REVOCATION: never).
EXPENDABLE, ORDINARY, REVOCATION = 0, 1, 2

_LEN = struct.Struct(">I")
_INT = struct.Struct(">q")
_FLOAT = struct.Struct(">d")


def kind_of(op: Operation[Any, Any]) -> int:
    return EXPENDABLE if op.expendable else REVOCATION if op.precious else ORDINARY


@dataclass(frozen=True)
class Entry:
    """One journaled call. `seq` is its place in the journal that holds it."""

    op: Operation[Any, Any]
    keys: tuple[str, ...]
    args: Any  # the call's record (`op.args`); the tier's rows keep `op.argv(args)`
    at_ms: int
    partition: str
    seq: int = field(default=0, compare=False)


class Journal(Protocol):
    """What a write-back reads and clears: the process's journal, or the host tier's."""

    def pending(self, partition: str, limit: int) -> list[Entry]: ...

    def done(self, partition: str, upto_seq: int) -> None: ...


@dataclass(frozen=True)
class Outage:
    """A partition's outage as the host's workers share it: why, and until when (monotonic
    seconds, the host's one clock) the hysteresis keeps it on the fallback."""

    condition: str
    hold_until: float


# --- the bytes a journal entry is kept as outside process memory ---


def encode_call(keys: Sequence[str], args: Sequence[Arg]) -> bytes:
    """Keys and typed args as bytes: a count, then each item tagged with its type."""
    out = [_LEN.pack(len(keys))]
    for key in keys:
        raw = key.encode()
        out.append(_LEN.pack(len(raw)) + raw)
    for arg in args:
        if isinstance(arg, bool):  # a bool is an int to Python; Redis sees it as 0/1 anyway
            arg = int(arg)
        if isinstance(arg, int):
            out.append(b"i" + _INT.pack(arg))
        elif isinstance(arg, float):
            out.append(b"f" + _FLOAT.pack(arg))
        else:
            raw = arg if isinstance(arg, bytes) else arg.encode()
            out.append((b"b" if isinstance(arg, bytes) else b"s") + _LEN.pack(len(raw)) + raw)
    return b"".join(out)


def decode_call(blob: bytes) -> tuple[tuple[str, ...], tuple[Arg, ...]]:
    """The inverse of `encode_call`; raises ValueError on anything else."""
    try:
        (count,) = _LEN.unpack_from(blob, 0)
        at = 4
        keys = []
        for _ in range(count):
            (size,) = _LEN.unpack_from(blob, at)
            keys.append(blob[at + 4 : at + 4 + size].decode())
            at += 4 + size
        args: list[Arg] = []
        while at < len(blob):
            tag = blob[at : at + 1]
            at += 1
            if tag == b"i":
                args.append(_INT.unpack_from(blob, at)[0])
                at += 8
            elif tag == b"f":
                args.append(_FLOAT.unpack_from(blob, at)[0])
                at += 8
            elif tag in (b"b", b"s"):
                (size,) = _LEN.unpack_from(blob, at)
                raw = blob[at + 4 : at + 4 + size]
                if len(raw) != size:
                    raise ValueError("an argument runs past the end of the entry")
                args.append(raw if tag == b"b" else raw.decode())
                at += 4 + size
            else:
                raise ValueError(f"unknown argument tag {tag!r}")
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    return tuple(keys), tuple(args)


# --- the process's own journal ---


class MemoryJournal:
    """A journal in process memory: a deque per partition, capped at `max_entries` each."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self.dropped: dict[str, int] = {}  # per partition: entries the cap dropped
        self._entries: dict[str, deque[Entry]] = {}
        self._compact_at: dict[str, int] = {}
        self._seq = 0

    def append(self, entry: Entry) -> None:
        entries = self._entries.setdefault(entry.partition, deque())
        if len(entries) >= self._compact_at.get(entry.partition, self.max_entries):
            self._compact(entry.partition, entries)
        self._seq += 1
        entries.append(
            Entry(entry.op, entry.keys, entry.args, entry.at_ms, entry.partition, self._seq)
        )

    def _compact(self, partition: str, entries: deque[Entry]) -> None:
        """Make room for a tenth of the cap: touches first, then the oldest non-revocations.
        A journal of revocations only grows past its cap (a bounded process beats an OOM
        kill, but not at the price of a logged-out session coming back); the next compaction
        then waits until a tenth more came, so appends stay O(1) amortised."""
        tenth = max(1, self.max_entries // 10)
        room = tenth
        for kind in (EXPENDABLE, ORDINARY):
            kept: deque[Entry] = deque()
            for entry in entries:
                if room and kind_of(entry.op) == kind:
                    room -= 1
                    self.dropped[partition] = self.dropped.get(partition, 0) + 1
                else:
                    kept.append(entry)
            entries.clear()
            entries.extend(kept)
            if not room:
                break
        self._compact_at[partition] = max(self.max_entries, len(entries) + tenth)

    def pending(self, partition: str, limit: int) -> list[Entry]:
        """The oldest `limit` entries of `partition`, oldest first."""
        entries = self._entries.get(partition)
        if not entries:
            return []
        return [entries[i] for i in range(min(limit, len(entries)))]

    def done(self, partition: str, upto_seq: int) -> None:
        """Forget the entries of `partition` up to and including `upto_seq` (replayed)."""
        entries = self._entries.get(partition)
        while entries and entries[0].seq <= upto_seq:
            entries.popleft()
        if not entries:
            self._compact_at.pop(partition, None)

    def size(self, partition: str) -> int:
        entries = self._entries.get(partition)
        return len(entries) if entries else 0

    def entries(self, partition: str) -> list[Entry]:
        return list(self._entries.get(partition, ()))

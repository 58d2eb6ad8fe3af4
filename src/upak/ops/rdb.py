"""RDB files: verifying one, and fetching one over the replication protocol.

Verification prefers `redis-check-rdb` (it parses every record); without it we check what
the format lets us check cheaply: the `REDIS00NN` header, the EOF opcode and the CRC-64
(Jones polynomial, reflected, as Redis computes it; crcmod's C code, ~250 MB/s) over
everything before the checksum.

`fetch_over_sync` does what `redis-cli --rdb` does: authenticate, `REPLCONF rdb-only 1`,
`SYNC`, and read the snapshot the server sends (`$<length>` or diskless `$EOF:<mark>`), so a
backup works when the server's disk is not local. Commands are packed by hiredis, error
replies mapped and TLS set up exactly as the store's own connection does it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import crcmod
import hiredis
import redis.exceptions as rex

from upak.config import Settings
from upak.connect import tls_context
from upak.store.wire import error_from_reply

CHUNK = 1 << 16

# Redis's crc64 (crc64(0, "123456789") == 0xe9c6d914c4b8d9ca): `crc64(data, crc=0)`, chained
# by passing the previous value.
crc64: Callable[..., int] = crcmod.mkCrcFun(0x1AD93D23594C935A9, initCrc=0, rev=True, xorOut=0)


class RdbError(Exception):
    """The file is not a valid RDB snapshot. The message is one line."""


@dataclass
class Verified:
    by: str  # "redis-check-rdb" | "header+crc64" | "header (checksum disabled)"


def verify_rdb(path: Path, use_tool: bool = True) -> Verified:
    version = _header_version(path)  # a file that is no RDB at all is refused first
    tool = shutil.which("redis-check-rdb") if use_tool else None
    if tool:
        result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or "RDB looks OK" not in result.stdout:
            lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
            detail = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")
            raise RdbError(f"redis-check-rdb rejects it: {detail.strip()}")
        return Verified("redis-check-rdb")
    return Verified(_check_crc(path, version))


def _header_version(path: Path) -> int:
    with path.open("rb") as handle:
        header = handle.read(9)
    if len(header) < 9 or not header.startswith(b"REDIS") or not header[5:].isdigit():
        raise RdbError("not an RDB file (no REDIS00NN header)")
    return int(header[5:])


def _check_crc(path: Path, version: int) -> str:
    size = path.stat().st_size
    if version < 5:
        return "header (RDB < 5 has no checksum)"
    if size < 9 + 9:
        raise RdbError("truncated: too short for an RDB file")
    crc = 0
    remaining = size - 8
    with path.open("rb") as handle:
        last = b""
        while remaining:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                raise RdbError("truncated while reading")
            crc = crc64(chunk, crc)
            remaining -= len(chunk)
            last = chunk
        stored = int.from_bytes(handle.read(8), "little")
    if last[-1:] != b"\xff":
        raise RdbError("truncated: the EOF marker is missing")
    if stored == 0:
        return "header (checksum disabled: rdbchecksum no)"
    if stored != crc:
        raise RdbError(f"checksum mismatch (stored {stored:016x}, computed {crc:016x})")
    return "header+crc64"


# --- fetching over SYNC ----------------------------------------------------------------


def _command(*args: str | bytes) -> bytes:
    # hiredis's stub types the command as a 1-tuple; it takes any number of arguments.
    return hiredis.pack_command(args)  # type: ignore[arg-type,no-any-return]


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(CHUNK)
        if not data:
            raise rex.ConnectionError("the server closed the connection during SYNC")
        self.buffer += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def chunks(self, size: int) -> Any:
        while size:
            if not self.buffer:
                self._fill()
            piece, self.buffer = self.buffer[:size], self.buffer[size:]
            size -= len(piece)
            yield piece

    def until(self, mark: bytes) -> Any:
        """Yield the stream up to (not including) `mark`, which ends it."""
        keep = len(mark)  # the mark may straddle two reads
        while True:
            at = self.buffer.find(mark)
            if at >= 0:
                yield self.buffer[:at]
                self.buffer = self.buffer[at + keep :]
                return
            if len(self.buffer) > keep:
                yield self.buffer[:-keep]
                self.buffer = self.buffer[-keep:]
            self._fill()


def _reply_error(line: bytes) -> rex.RedisError:
    return error_from_reply(hiredis.ReplyError(line[1:].decode(errors="replace")))


def _open_socket(settings: Settings, master: tuple[str, int] | None, timeout: float) -> Any:
    target = settings.redis
    if target.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(target.path))
        return sock
    host, port = master or target.hosts[0]
    sock = socket.create_connection((host, port), timeout=timeout)
    if not target.tls:
        return sock
    try:
        return tls_context(settings).wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def fetch_over_sync(
    settings: Settings,
    out: BinaryIO,
    *,
    master: tuple[str, int] | None = None,
    timeout: float = 30.0,
    on_size: Callable[[int | None], None] = lambda total: None,
    on_chunk: Callable[[bytes], None] = lambda chunk: None,
) -> int:
    """Write the server's RDB snapshot to `out`; return its size. Raises redis errors."""
    target = settings.redis
    sock = _open_socket(settings, master, timeout)
    with contextlib.closing(sock):
        reader = _Reader(sock)
        if target.password:
            auth = (target.username, target.password) if target.username else (target.password,)
            sock.sendall(_command("AUTH", *auth))
            line = reader.line()
            if line.startswith(b"-"):
                raise _reply_error(line)
        # Tell Redis 7 we are not a real replica (no replication stream afterwards).
        sock.sendall(_command("REPLCONF", "rdb-only", "1"))
        reader.line()  # -ERR on servers that do not know it: harmless
        sock.sendall(_command("SYNC"))
        while True:
            # The master sends bare newlines as keep-alives while it prepares the snapshot.
            while reader.buffer.startswith(b"\n"):
                reader.buffer = reader.buffer[1:]
            if not reader.buffer:
                reader._fill()
                continue
            header = reader.line()
            if header:
                break
        if header.startswith(b"-"):
            raise _reply_error(header)
        if not header.startswith(b"$"):
            raise rex.ResponseError(f"unexpected SYNC reply {header[:40]!r}")
        size = 0
        if header.startswith(b"$EOF:"):
            on_size(None)
            pieces = reader.until(header[5:])
        else:
            total = int(header[1:])
            on_size(total)
            pieces = reader.chunks(total)
        for piece in pieces:
            out.write(piece)
            on_chunk(piece)
            size += len(piece)
        return size

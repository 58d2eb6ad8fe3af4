"""What a cache entry is on the wire: a value in JSON or msgpack inside a small msgpack
envelope (format, fresh-until, codec, payload, tag stamps). Never pickle: an entry that does
not decode is a `CacheDecodeError`, which the cache treats as a miss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from upak.store import Arg

Codec = Literal["json", "msgpack"]


def _bytes(value: Arg) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


_FORMAT = 1
_CODECS: dict[str, int] = {"json": 1, "msgpack": 2}


class CacheDecodeError(ValueError):
    """A stored entry is not one this code wrote (corrupt, truncated, another format)."""


def encode_value(value: Any, codec: Codec) -> bytes:
    if codec == "json":
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"cache value is not JSON-serialisable ({exc}); convert it to dicts, lists, "
                "strings and numbers, or use codec='msgpack'"
            ) from None
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"cache value is not msgpack-serialisable ({exc}); convert it to dicts, lists, "
            "strings, bytes and numbers"
        ) from None


def decode_value(payload: bytes, codec_id: int) -> Any:
    if codec_id == _CODECS["json"]:
        return json.loads(payload)
    if codec_id == _CODECS["msgpack"]:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    raise CacheDecodeError(f"unknown codec {codec_id!r}")


@dataclass(frozen=True)
class Entry:
    """A decoded entry: the value, when it goes stale, and the tag versions it was made under."""

    value: Any
    fresh_until_ms: int
    stamps: dict[str, bytes]


def pack_entry(
    payload: bytes, codec: Codec, fresh_until_ms: int, stamps: dict[str, bytes]
) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [_FORMAT, fresh_until_ms, _CODECS[codec], payload, stamps], use_bin_type=True
    )


def unpack_entry(blob: bytes) -> Entry:
    """The entry in `blob`; CacheDecodeError for anything this module did not write."""
    try:
        fmt, fresh_until, codec_id, payload, stamps = msgpack.unpackb(
            blob, raw=False, strict_map_key=False
        )
        if fmt != _FORMAT or not isinstance(fresh_until, int) or not isinstance(stamps, dict):
            raise CacheDecodeError("unexpected envelope")
        if not isinstance(payload, bytes):
            raise CacheDecodeError("payload is not bytes")
        value = decode_value(payload, codec_id)
    except CacheDecodeError:
        raise
    except Exception as exc:  # msgpack and json raise a zoo of types on garbage
        raise CacheDecodeError(f"{type(exc).__name__}: {exc}") from None
    return Entry(value, fresh_until, {str(k): _bytes(v) for k, v in stamps.items()})

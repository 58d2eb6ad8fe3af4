"""Caching over the store: TTLs, single-flight, stale-while-revalidate, tags, a decorator.

The seed's third use of Redis ("caching: better performance"; in fallback mode "caching is
disabled"). What holds, and how:

* **Outage = caching off.** Every read/write operation here declares `Fallback.BYPASS`: while
  Redis is away a read is a miss, a write is dropped, and the caller's source answers. Nothing
  is cached in process memory. Deletes and tag invalidations are the exception: they run on the
  memory twin and are *written back* when Redis returns, so an invalidation made during an
  outage still removes the entry the outage kept in Redis (no old `/me` after recovery).
* **Tags without cross-slot scripts.** A tag is a version token in its own key
  (`cache:{t:TAG}`). Before computing, a writer captures the current token of each of its tags;
  the entry is stored stamped with them. Invalidating a tag replaces its token with a fresh
  random one. A reader accepts an entry only when every stamp equals the tag's current token,
  so an entry written by a computation that raced an invalidation is dead the moment the
  invalidation lands, whichever of the two reached Redis first. Tokens are random, not
  counters: a version key lost to eviction or expiry can never come back equal to an old stamp
  (a missing version key means "no entry under this tag is valid").
* **Redis Cluster.** Every script touches one slot: an entry and its single-flight lease share
  the hash tag `{e:KEY}`; a tag's version is alone in `{t:TAG}`. A read sends the entry GET
  and the tag GETs in one event-loop step, which the RedisStore pipelines into one round trip
  (on a Cluster, one per node, in parallel). No MULTI, no cross-slot Lua, any topology.
* **Single-flight.** Concurrent misses of one key in a process share one computation (a task
  the callers await, so one cancelled caller does not cancel the others). Across processes a
  short lease key (SET NX PX, in the entry's slot) lets one process compute while the others
  serve the stale value if there is one, or poll briefly for the winner's write.
* **Values** are JSON or msgpack inside a small msgpack envelope; never pickle. An entry that
  fails to decode is a miss, logged and counted, and is overwritten by the next computation.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

import msgpack

from upak.store import Arg, Fallback, KeySpace, Operation, Store
from upak.store.primitives import DELETE, SET

if TYPE_CHECKING:
    from upak.store import MemoryData

log = logging.getLogger("upak.cache")

T = TypeVar("T")
P = ParamSpec("P")
Codec = Literal["json", "msgpack"]


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# The reply of a cache operation while Redis is away (caching is off).
BYPASSED: Any = _Marker("BYPASSED")
# What a lookup returns while Redis is away: not a miss (the counters tell them apart).
CACHING_OFF: Any = _Marker("CACHING_OFF")


# --- operations: each Lua script next to its memory twin ----------------------------------


def _read_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> bytes | None:
    return data.get(keys[0])


# A plain GET, but BYPASS: during an outage the read is a miss served by the source.
READ: Operation[Any] = Operation(
    name="cache_read",
    lua="return redis.call('GET', KEYS[1])",
    memory=_read_memory,
    fallback=Fallback.BYPASS,
    bypass=lambda args: BYPASSED,
)


def _stamp_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> bytes:
    token, min_ttl = args[0], int(args[1])
    current = data.get(keys[0])
    if current is None:
        data.set(keys[0], token, px=min_ttl)
        return data.get(keys[0]) or b""
    if data.pttl(keys[0]) < min_ttl:
        data.pexpire(keys[0], min_ttl)
    return current


# The tag's current version token, created if missing; the key lives at least `min_ttl` ms so
# an entry stamped now is not killed by its tag's version expiring before the entry does.
STAMP: Operation[Any] = Operation(
    name="cache_stamp",
    lua="""
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
""",
    memory=_stamp_memory,
    fallback=Fallback.BYPASS,
    bypass=lambda args: BYPASSED,
)


def _lease_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    return int(data.set(keys[0], args[0], px=int(args[1]), nx=True))


# One computation across processes: the first to take the lease computes. During an outage
# every caller "has" it: each process computes for itself (caching is off anyway).
LEASE: Operation[bool] = Operation(
    name="cache_lease",
    lua="return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0",
    memory=_lease_memory,
    parse=bool,
    fallback=Fallback.BYPASS,
    bypass=lambda args: True,
)


def _write_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    data.set(keys[0], args[0], px=int(args[1]))
    if args[2] != "" and data.get(keys[1]) == _bytes(args[2]):
        data.delete(keys[1])
    return 1


# Store the entry and release our lease (if we still hold it) in one step: waiters polling the
# entry see it the moment the lease goes. KEYS: entry, lease (one slot: `{e:KEY}`).
WRITE: Operation[bool] = Operation(
    name="cache_write",
    lua="""
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
""",
    memory=_write_memory,
    parse=bool,
    fallback=Fallback.BYPASS,
    bypass=lambda args: False,
)


def _release_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Arg]) -> int:
    if data.get(keys[0]) == _bytes(args[0]):
        return data.delete(keys[0])
    return 0


# Give the lease back after a failed computation, only if it is still ours.
RELEASE: Operation[bool] = Operation(
    name="cache_release",
    lua="""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
    memory=_release_memory,
    parse=bool,
    fallback=Fallback.BYPASS,
    bypass=lambda args: False,
)


# Deletes and invalidations are the store's own primitives, and like them written back after
# an outage: the entry Redis kept must not outlive a delete, and a payment processed while
# Redis was away (a fresh random version for the user's tag) must still kill what Redis holds
# when it returns.


def _bytes(value: Arg) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


# --- values -------------------------------------------------------------------------------

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


# --- names --------------------------------------------------------------------------------

# Printable ASCII without braces (they would change the Cluster hash tag) or spaces.
_SAFE_NAME = re.compile(r"^[!-z|~]{1,200}$")


def _safe(name: str, what: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ValueError(
            f"cache {what} {name!r:.60} must be 1-200 printable ASCII characters without "
            "spaces or braces; hash anything else (see `digest`)"
        )
    return name


def digest(*parts: Any) -> str:
    """A short stable name for arbitrary key material (JSON-able values), safe in any key."""
    try:
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise TypeError(
            "cache key arguments must be JSON values (str, int, float, bool, None, lists, "
            "dicts); exclude others from the key with `key_args=`"
        ) from None
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def user_tag(user_id: Any) -> str:
    """The tag every per-user entry carries: invalidate it when the user's data changes."""
    return f"user:{_user_part(user_id)}"


def user_key(user_id: Any, name: str) -> str:
    """A per-user key: the user id is part of the key, so users never share an entry."""
    return f"u:{_user_part(user_id)}:{_safe(name, 'key')}"


def _user_part(user_id: Any) -> str:
    if user_id is None or user_id == "":
        raise ValueError("a per-user cache entry needs a user id (got none)")
    text = str(user_id)
    return text if _SAFE_NAME.match(text) and len(text) <= 64 else "h" + digest(text)


# --- the cache ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec(Generic[T]):
    """One get_or_compute call's options, as its computation carries them."""

    key: str
    compute: Callable[[], Awaitable[T]]
    ttl: float
    tags: tuple[str, ...]
    stale_ttl: float
    codec: Codec
    dump: Callable[[T], Any] | None
    load: Callable[[Any], T] | None


@dataclass(frozen=True)
class TagSnapshot:
    """Tag versions taken before a computation (None while caching is off)."""

    stamps: dict[str, bytes] | None


@dataclass
class CacheStats:
    """Counters /metrics exposes (read at scrape time)."""

    hits: int = 0
    stale_hits: int = 0
    misses: int = 0
    bypasses: int = 0
    computes: int = 0
    local_waits: int = 0  # joined another caller's computation in this process
    lease_waits: int = 0  # waited for another process's computation
    decode_errors: int = 0
    invalidations: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Cache:
    """Cached values in the store: see the module docstring for the guarantees."""

    def __init__(
        self,
        store: Store,
        keys: KeySpace,
        *,
        default_ttl: float = 300,
        codec: Codec = "msgpack",
        lease_ttl: float = 5.0,
        lease_wait: float = 1.0,
        lease_poll: float = 0.02,
        tag_ttl: float = 7 * 86_400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keys = keys
        self.default_ttl = default_ttl
        self.codec: Codec = codec
        self.lease_ttl = lease_ttl
        self.lease_wait = lease_wait
        self.lease_poll = lease_poll
        self.tag_ttl = tag_ttl
        self.clock = clock
        self.stats = CacheStats()
        # Computations in flight in this process, by key: misses join them (single-flight).
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        # Background refreshes of stale entries; separate, since they may yield no value.
        self._refreshing: dict[str, asyncio.Task[Any]] = {}
        # Lookups not yet sent to Redis, by (key, tags): identical ones share them.
        self._reads: dict[tuple[str, tuple[str, ...]], asyncio.Future[list[Any]]] = {}

    # --- key names ---

    def entry_key(self, key: str) -> str:
        return self.keys.tagged("cache", "e:" + _safe(key, "key"))

    def lease_key(self, key: str) -> str:
        return self.keys.tagged("cache", "e:" + _safe(key, "key"), "lease")

    def tag_key(self, tag: str) -> str:
        return self.keys.tagged("cache", "t:" + _safe(tag, "tag"))

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- plain operations ---

    async def get(self, key: str, default: Any = None) -> Any:
        """The fresh value under `key`, or `default` (miss, dead or corrupt entry, outage)."""
        found = await self._lookup(key, ())
        if not isinstance(found, Entry) or found.fresh_until_ms <= self._now_ms():
            return default
        return found.value

    async def set(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        tags: Iterable[str] | TagSnapshot = (),
        *,
        codec: Codec | None = None,
    ) -> bool:
        """Store `value` for `ttl` seconds (default REDIS_TTL). False when caching is off.

        With tags, pass a `TagSnapshot` taken (`await cache.snapshot(tags)`) *before* reading
        the source the value comes from: an invalidation after the snapshot kills this entry.
        Plain tag names are stamped now, which is right only for values already current.
        """
        ttl = self.default_ttl if ttl is None else ttl
        snapshot = tags if isinstance(tags, TagSnapshot) else await self.snapshot(tags, ttl)
        if snapshot.stamps is None:
            return False
        return await self._write(key, value, ttl, 0, snapshot.stamps, codec, token="")

    async def snapshot(self, tags: Iterable[str], ttl: float | None = None) -> TagSnapshot:
        """The current versions of `tags`, to stamp a value about to be read from the source."""
        ttl = self.default_ttl if ttl is None else ttl
        return TagSnapshot(await self._stamp(tuple(tags), ttl))

    async def delete(self, key: str) -> bool:
        return await self.store.run(DELETE, [self.entry_key(key)])

    async def invalidate(self, *tags: str) -> None:
        """Every entry written under any of `tags` is gone for all readers when this returns."""
        ttl_ms = int(self.tag_ttl * 1000)
        await asyncio.gather(
            *(
                self.store.run(SET, [self.tag_key(tag)], [secrets.token_hex(8), ttl_ms])
                for tag in tags
            )
        )
        self.stats.invalidations += len(tags)

    async def invalidate_user(self, user_id: Any) -> None:
        """Drop every per-user entry of `user_id` (after a payment, a profile change)."""
        await self.invalidate(user_tag(user_id))

    # --- get_or_compute ---

    async def get_or_compute(
        self,
        key: str,
        compute: Callable[[], Awaitable[T]],
        ttl: float | None = None,
        tags: Iterable[str] = (),
        *,
        stale_ttl: float = 0,
        codec: Codec | None = None,
        dump: Callable[[T], Any] | None = None,
        load: Callable[[Any], T] | None = None,
    ) -> T:
        """The cached value of `key`, computed by `compute()` once on a miss.

        `ttl` seconds fresh (default REDIS_TTL); with `stale_ttl` the entry is kept that much
        longer and served stale while one caller refreshes it in the background. `dump` turns
        a computed value into what the codec stores and `load` turns it back; if `load` raises
        ValueError, TypeError or KeyError the entry counts as corrupt (a miss). Exceptions from
        `compute` reach every caller waiting on it and nothing is cached.
        """
        spec = _Spec(
            key=key,
            compute=compute,
            ttl=self.default_ttl if ttl is None else ttl,
            tags=tuple(tags),
            stale_ttl=stale_ttl,
            codec=codec or self.codec,
            dump=dump,
            load=load,
        )
        found = await self._lookup(key, spec.tags, load)
        if isinstance(found, Entry) and found.fresh_until_ms > self._now_ms():
            self.stats.hits += 1
            return found.value  # type: ignore[no-any-return]
        if isinstance(found, Entry) and stale_ttl > 0:
            # Past its soft TTL: served once more while one caller refreshes it.
            self.stats.stale_hits += 1
            self._refresh_in_background(spec)
            return found.value  # type: ignore[no-any-return]
        if found is not CACHING_OFF:
            self.stats.misses += 1
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fill(spec))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        else:
            self.stats.local_waits += 1
        # Shielded: a caller that goes away (client disconnect) does not cancel the others.
        return await asyncio.shield(task)  # type: ignore[no-any-return]

    def _refresh_in_background(self, spec: _Spec[Any]) -> None:
        key = spec.key
        if key in self._inflight or key in self._refreshing:
            return
        task = asyncio.get_running_loop().create_task(self._fill(spec, wait=False))
        self._refreshing[key] = task

        def done(t: asyncio.Task[Any]) -> None:
            self._refreshing.pop(key, None)
            if not t.cancelled() and t.exception() is not None:
                log.warning("background refresh of cache key %s failed: %r", key, t.exception())

        task.add_done_callback(done)

    async def drain(self, grace: float = 5.0) -> None:
        """Wait for background refreshes (tests, shutdown); cancel what outlasts `grace` s."""
        try:
            async with asyncio.timeout(grace):
                while self._refreshing:
                    await asyncio.gather(*list(self._refreshing.values()), return_exceptions=True)
        except TimeoutError:
            for task in list(self._refreshing.values()):
                task.cancel()

    async def _fill(self, spec: _Spec[T], wait: bool = True) -> T | None:
        """Compute and store `spec.key` as the one caller in this process that does so."""
        key, token = spec.key, secrets.token_hex(8)
        lease_ms = max(int(self.lease_ttl * 1000), 1)
        # Take the lease and the tag versions together (one round trip). The versions are
        # taken before computing: an invalidation from here on kills what we write.
        leased, stamps = await asyncio.gather(
            self.store.run(LEASE, [self.lease_key(key)], [token, lease_ms]),
            self._stamp(spec.tags, spec.ttl + spec.stale_ttl),
        )
        if not leased:
            if not wait:
                return None  # another process is refreshing it; the stale value stands
            self.stats.lease_waits += 1
            found = await self._await_other_process(spec)
            if found is not None:
                return found.value  # type: ignore[no-any-return]
            token = ""  # the other process took too long: compute without the lease
        try:
            self.stats.computes += 1
            value = await spec.compute()
            if stamps is not None:
                stored = spec.dump(value) if spec.dump is not None else value
                await self._write(key, stored, spec.ttl, spec.stale_ttl, stamps, spec.codec, token)
                return value
        except BaseException:
            if token:
                await self.store.run(RELEASE, [self.lease_key(key)], [token])
            raise
        if token:
            await self.store.run(RELEASE, [self.lease_key(key)], [token])
        return value

    async def _await_other_process(self, spec: _Spec[Any]) -> Entry | None:
        deadline = time.monotonic() + self.lease_wait
        while time.monotonic() < deadline:
            await asyncio.sleep(self.lease_poll)
            found = await self._lookup(spec.key, spec.tags, spec.load)
            if found is CACHING_OFF:
                return None
            if isinstance(found, Entry) and found.fresh_until_ms > self._now_ms():
                return found
        return None

    # --- the round trips ---

    async def _stamp(self, tags: tuple[str, ...], ttl: float) -> dict[str, bytes] | None:
        """The current version of each tag (created if missing); None while caching is off."""
        if not tags:
            return {}
        min_ttl_ms = int(max(self.tag_ttl, ttl) * 1000)
        versions = await asyncio.gather(
            *(
                self.store.run(STAMP, [self.tag_key(tag)], [secrets.token_hex(8), min_ttl_ms])
                for tag in tags
            )
        )
        if any(v is BYPASSED for v in versions):
            return None
        return {tag: _bytes(v) for tag, v in zip(tags, versions, strict=True)}

    async def _write(
        self,
        key: str,
        value: Any,
        ttl: float,
        stale_ttl: float,
        stamps: dict[str, bytes],
        codec: Codec | None,
        token: str,
    ) -> bool:
        codec = codec or self.codec
        now = self._now_ms()
        fresh_ms = max(int(ttl * 1000), 1)
        blob = pack_entry(encode_value(value, codec), codec, now + fresh_ms, stamps)
        keep_ms = fresh_ms + max(int(stale_ttl * 1000), 0)
        return await self.store.run(
            WRITE, [self.entry_key(key), self.lease_key(key)], [blob, keep_ms, token]
        )

    async def _lookup(
        self, key: str, tags: tuple[str, ...], load: Callable[[Any], Any] | None = None
    ) -> Entry | object | None:
        """The live entry under `key` (maybe stale), None on a miss, CACHING_OFF in an outage.

        The tags the caller expects are read in the same round trip as the entry; tags the
        entry carries beyond those cost one more (a plain `get` of a tagged entry).
        """
        blob, *found_versions = await self._fetch(key, tags)
        if blob is BYPASSED:
            self.stats.bypasses += 1
            return CACHING_OFF
        if blob is None:
            return None
        try:
            entry = unpack_entry(blob)
            value = load(entry.value) if load is not None else entry.value
        except (CacheDecodeError, ValueError, TypeError, KeyError) as exc:
            self.stats.decode_errors += 1
            log.warning("cache entry %s could not be decoded (%s): treated as a miss", key, exc)
            return None
        versions = dict(zip(tags, found_versions, strict=True))
        missing = [tag for tag in entry.stamps if tag not in versions]
        if missing:
            extra = await asyncio.gather(
                *(self.store.run(READ, [self.tag_key(tag)]) for tag in missing)
            )
            versions.update(zip(missing, extra, strict=True))
        for tag, stamp in entry.stamps.items():
            if versions.get(tag) != stamp:  # invalidated since it was computed (or BYPASSED)
                return None
        return Entry(value, entry.fresh_until_ms, entry.stamps)

    async def _fetch(self, key: str, tags: tuple[str, ...]) -> list[Any]:
        """The raw replies for the entry and its tags' versions: one pipelined round trip.

        Concurrent identical lookups share one read, but only while that read has not been
        sent: the shared slots are cleared one loop step after they open, before the store
        flushes its pipeline. So whoever joins a read started before it reached Redis, and
        sees Redis as of a moment inside its own call: a read that starts after an
        invalidation returned never gets an older answer. Only immutable bytes are shared;
        each caller decodes its own value.
        """
        slot = (key, tags)
        shared = self._reads.get(slot)
        if shared is None:
            if not self._reads:
                asyncio.get_running_loop().call_soon(self._reads.clear)
            shared = self._reads[slot] = asyncio.ensure_future(self._read(key, tags))
        return await asyncio.shield(shared)

    async def _read(self, key: str, tags: tuple[str, ...]) -> list[Any]:
        if not tags:
            return [await self.store.run(READ, [self.entry_key(key)])]
        return await asyncio.gather(
            self.store.run(READ, [self.entry_key(key)]),
            *(self.store.run(READ, [self.tag_key(tag)]) for tag in tags),
        )

    # --- the decorator ---

    def cached(
        self,
        name: str,
        *,
        user: str | None,
        ttl: float | None = None,
        tags: Iterable[str] | Callable[..., Iterable[str]] = (),
        key_args: Sequence[str] | None = None,
        stale_ttl: float = 0,
        codec: Codec | None = None,
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
        """Cache an async function's results, keyed explicitly.

        The key is `name` + the values of `key_args` (default: every parameter; each must be a
        JSON value). `user` is required and must be spelled out: the name of the parameter that
        holds the user id for per-user data (the id goes into the key and the entry gets the
        user's tag, so `invalidate_user` drops it), or None for data shared by everyone.
        `tags` is a list, or a function of the call's arguments returning one.
        """
        _safe(name, "function name")

        def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
            signature = inspect.signature(fn)
            names = list(signature.parameters)
            if user is not None and user not in names:
                raise TypeError(f"@cached({name!r}, user={user!r}): {fn.__name__} has no {user!r}")
            keyed = list(names if key_args is None else key_args)
            unknown = [n for n in keyed if n not in names]
            if unknown:
                raise TypeError(f"@cached({name!r}): {fn.__name__} has no parameter {unknown}")
            if user is not None and user not in keyed:
                keyed.append(user)

            @functools.wraps(fn)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                values = bound.arguments
                material = digest(name, [[n, values[n]] for n in keyed])
                entry_tags = list(tags(*args, **kwargs) if callable(tags) else tags)
                if user is not None:
                    key = user_key(values[user], f"fn:{name}:{material}")
                    entry_tags.append(user_tag(values[user]))
                else:
                    key = f"fn:{name}:{material}"
                return await self.get_or_compute(
                    key,
                    lambda: fn(*args, **kwargs),
                    ttl,
                    entry_tags,
                    stale_ttl=stale_ttl,
                    codec=codec,
                )

            return wrapper

        return decorate

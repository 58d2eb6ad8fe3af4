"""The Cache: plain reads and writes, get_or_compute (single-flight, stale-while-revalidate),
tag snapshots and invalidation, over the operations of `operations.py`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from upak.features.cache.codec import (
    CacheDecodeError,
    Codec,
    Entry,
    _bytes,
    encode_value,
    pack_entry,
    unpack_entry,
)
from upak.features.cache.decorator import cached
from upak.features.cache.names import _safe, user_tag
from upak.features.cache.operations import (
    BYPASSED,
    CACHING_OFF,
    LEASE,
    READ,
    RELEASE,
    STAMP,
    WRITE,
    Holder,
    Lease,
    Stamp,
    Write,
)
from upak.store import KeySpace, Store
from upak.store.operation import NO_ARGS
from upak.store.primitives import DELETE, SET, Expiring

log = logging.getLogger("upak.cache")

# Bound of the key-name memo (cleared whole when full: a miss only costs the naming).
NAMES_MAX = 10_000
# Bound of the decoded-entry memo (`immutable=True` lookups; cleared whole when full: a miss
# only costs one decode).
DECODED_MAX = 4_096

T = TypeVar("T")
P = ParamSpec("P")


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


# A lookup's read started ahead of the lookup (`Cache.prefetch`): the raw replies (the
# entry's blob alone for a lookup without tags, else [blob, *tag versions]).
PrefetchedRead = asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class _Decoded:
    """What one entry blob decodes to, kept for `immutable` lookups: the same bytes are not
    decoded again. `tags` and `versions` are the stamps in the order the entry lists them."""

    blob: bytes
    load: Callable[[Any], Any] | None
    entry: Entry
    tags: tuple[str, ...]
    versions: list[bytes]


def _retrieve(read: asyncio.Future[Any]) -> None:
    if not read.cancelled():
        read.exception()


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
    """Cached values in the store: see the package docstring for the guarantees."""

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
        self._reads: dict[tuple[str, tuple[str, ...]], asyncio.Future[Any]] = {}
        # The last blob each key's `immutable` lookups decoded, and what it decoded to.
        self._decoded: dict[str, _Decoded] = {}
        # Key names by cache key and tag: a hot key is named (and its name checked) once.
        self._names: dict[tuple[str, str], str] = {}

    # --- key names ---

    def entry_key(self, key: str) -> str:
        return self.keys.tagged("cache", "e:" + _safe(key, "key"))

    def lease_key(self, key: str) -> str:
        return self.keys.tagged("cache", "e:" + _safe(key, "key"), "lease")

    def tag_key(self, tag: str) -> str:
        return self.keys.tagged("cache", "t:" + _safe(tag, "tag"))

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _name(self, kind: str, name: str) -> str:
        """`entry_key` (kind "e") or `tag_key` ("t"), remembered: the reads of every request
        name the same few keys."""
        memo_key = (kind, name)
        found = self._names.get(memo_key)
        if found is None:
            found = self.entry_key(name) if kind == "e" else self.tag_key(name)
            if len(self._names) >= NAMES_MAX:
                self._names.clear()
            self._names[memo_key] = found
        return found

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
        return await self.store.run(DELETE, [self.entry_key(key)], NO_ARGS)

    async def invalidate(self, *tags: str) -> None:
        """Every entry written under any of `tags` is gone for all readers when this returns."""
        ttl_ms = int(self.tag_ttl * 1000)
        await asyncio.gather(
            *(
                self.store.run(SET, [self.tag_key(tag)], Expiring(secrets.token_hex(8), ttl_ms))
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
        prefetched: PrefetchedRead | None = None,
        immutable: bool = False,
    ) -> T:
        """The cached value of `key`, computed by `compute()` once on a miss.

        `ttl` seconds fresh (default REDIS_TTL); with `stale_ttl` the entry is kept that much
        longer and served stale while one caller refreshes it in the background. `dump` turns
        a computed value into what the codec stores and `load` turns it back; if `load` raises
        ValueError, TypeError or KeyError the entry counts as corrupt (a miss). Exceptions from
        `compute` reach every caller waiting on it and nothing is cached. `prefetched` is
        this lookup's read, started earlier by `prefetch(key, tags)` with the same tags.
        `immutable`: the (loaded) value is never changed by anyone (a frozen record of bytes
        and strings), so a hit whose entry is byte for byte the one this process decoded
        last returns that same object instead of decoding it again. Redis is still read on
        every lookup, entry and tags: only the decoding is saved, never a check.
        """
        tag_names = tuple(tags)
        found = await self._lookup(key, tag_names, load, prefetched, immutable)
        if isinstance(found, Entry) and found.fresh_until_ms > self._now_ms():
            self.stats.hits += 1  # the common case: nothing more to build or start
            return found.value  # type: ignore[no-any-return]
        spec = _Spec(
            key=key,
            compute=compute,
            ttl=self.default_ttl if ttl is None else ttl,
            tags=tag_names,
            stale_ttl=stale_ttl,
            codec=codec or self.codec,
            dump=dump,
            load=load,
        )
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

    def prefetch(self, key: str, tags: Iterable[str] = ()) -> PrefetchedRead:
        """Start the read a `get_or_compute(key, …, tags)` would make, now, so that it travels
        with whatever else this loop step sends (a request's session lookup); hand it over
        as `prefetched=`. It counts nothing until then: a read nobody uses (the request was
        refused) is simply dropped. It sees the store as of now, which is within the
        caller's own request: an invalidation that returned before it started is seen."""
        return self._shared_read(key, tuple(tags))

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
            self.store.run(LEASE, [self.lease_key(key)], Lease(token, lease_ms)),
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
                await self.store.run(RELEASE, [self.lease_key(key)], Holder(token))
            raise
        if token:
            await self.store.run(RELEASE, [self.lease_key(key)], Holder(token))
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
                self.store.run(STAMP, [self.tag_key(tag)], Stamp(secrets.token_hex(8), min_ttl_ms))
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
            WRITE, [self.entry_key(key), self.lease_key(key)], Write(blob, keep_ms, token)
        )

    async def _lookup(
        self,
        key: str,
        tags: tuple[str, ...],
        load: Callable[[Any], Any] | None = None,
        prefetched: PrefetchedRead | None = None,
        immutable: bool = False,
    ) -> Entry | object | None:
        """The live entry under `key` (maybe stale), None on a miss, CACHING_OFF in an outage.

        The tags the caller expects are read in the same round trip as the entry; tags the
        entry carries beyond those cost one more (a plain `get` of a tagged entry).
        """
        shared = self._shared_read(key, tags) if prefetched is None else prefetched
        # A read already answered (a prefetch, usually) is taken as it is: no wait, no shield.
        replies = shared.result() if shared.done() else await asyncio.shield(shared)
        if tags:
            blob, *found_versions = replies
        else:
            blob, found_versions = replies, []
        if blob is BYPASSED:
            self.stats.bypasses += 1
            return CACHING_OFF
        if blob is None:
            return None
        decoded = self._decoded.get(key) if immutable else None
        # `!=`, not `is not`: a classmethod (Representation.load) is a new bound method each time.
        if decoded is None or decoded.load != load or decoded.blob != blob:
            decoded = self._decode(key, blob, load)
            if decoded is None:
                return None
            if immutable:
                if len(self._decoded) >= DECODED_MAX:
                    self._decoded.clear()
                self._decoded[key] = decoded
        if decoded.tags == tags:  # the usual case: the entry carries exactly the tags read
            if decoded.versions == found_versions:
                return decoded.entry
            return None  # invalidated since it was computed (or BYPASSED)
        versions = dict(zip(tags, found_versions, strict=True))
        missing = [tag for tag in decoded.tags if tag not in versions]
        if missing:
            extra = await asyncio.gather(
                *(self.store.run(READ, [self.tag_key(tag)], NO_ARGS) for tag in missing)
            )
            versions.update(zip(missing, extra, strict=True))
        for tag, stamp in zip(decoded.tags, decoded.versions, strict=True):
            if versions.get(tag) != stamp:  # invalidated since it was computed (or BYPASSED)
                return None
        return decoded.entry

    def _decode(self, key: str, blob: bytes, load: Callable[[Any], Any] | None) -> _Decoded | None:
        """`blob` as an entry with its value loaded; None (a miss, counted and logged) for an
        entry this code cannot read."""
        try:
            entry = unpack_entry(blob)
            value = load(entry.value) if load is not None else entry.value
        except (CacheDecodeError, ValueError, TypeError, KeyError) as exc:
            self.stats.decode_errors += 1
            log.warning("cache entry %s could not be decoded (%s): treated as a miss", key, exc)
            return None
        stamps = entry.stamps
        return _Decoded(
            blob,
            load,
            Entry(value, entry.fresh_until_ms, stamps),
            tuple(stamps),
            list(stamps.values()),
        )

    def _shared_read(self, key: str, tags: tuple[str, ...]) -> asyncio.Future[Any]:
        """The raw replies for the entry and its tags' versions: one pipelined round trip.

        Each store call is its own task, created now: their first steps run, in order, on
        the loop's next step, ahead of the store's flush that a call made in this step (a
        request's session lookup, after `prefetch`) scheduled, so all of them leave in one
        write. The reply is the entry's blob alone without tags, else [blob, *versions].

        Concurrent identical lookups share one read, but only while that read has not been
        sent: the shared slots are cleared one loop step after they open, before the store
        flushes its pipeline. So whoever joins a read started before it reached Redis, and
        sees Redis as of a moment inside its own call: a read that starts after an
        invalidation returned never gets an older answer. Only immutable bytes are shared;
        each caller decodes its own value (unless it declared the value immutable). Callers
        wait on it shielded: one that goes away does not cancel the others' read.
        """
        slot = (key, tags)
        shared = self._reads.get(slot)
        if shared is None:
            loop = asyncio.get_running_loop()
            if not self._reads:
                loop.call_soon(self._reads.clear)
            run = self.store.run
            entry: asyncio.Future[Any] = loop.create_task(
                run(READ, [self._name("e", key)], NO_ARGS)
            )
            if tags:
                versions = [
                    loop.create_task(run(READ, [self._name("t", t)], NO_ARGS)) for t in tags
                ]
                entry = asyncio.gather(entry, *versions)
            shared = self._reads[slot] = entry
            # Nobody may be left to ask (a prefetch dropped, its callers gone): asked here,
            # a failed read is not logged as "never retrieved" (its callers got the error).
            shared.add_done_callback(_retrieve)
        return shared

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
        """Cache an async function's results, keyed explicitly (`upak.features.cache.decorator`
        says how the key is made and what `user` must be)."""
        return cached(
            self,
            name,
            user=user,
            ttl=ttl,
            tags=tags,
            key_args=key_args,
            stale_ttl=stale_ttl,
            codec=codec,
        )

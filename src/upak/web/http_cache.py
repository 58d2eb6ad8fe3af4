"""HTTP caching of the service's reads: Cache-Control, strong ETags, 304 on If-None-Match.

A read is rendered once into a `Representation` (the exact body bytes and their ETag) and
that pair is what the cache holds, so a hit costs no serialisation or hashing and every
process serves byte-identical bodies with identical ETags. While Redis is away the body is
rendered from the source on each request; the ETag is the same (it is a hash of the bytes),
so clients keep getting 304s through an outage.

Two policies:
* public reads (`GET /plans`): `Cache-Control: public, max-age=N`; browsers and proxies may
  reuse the body for N seconds, then revalidate with If-None-Match.
* per-user reads (`GET /me`): `Cache-Control: private, no-cache`; only the user's browser may
  store it and must revalidate every time, so a payment shows at once (the server answers 304
  while nothing changed). `Vary: Cookie, Authorization` keeps shared caches honest.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from upak.features.cache import Cache, PrefetchedRead, user_key, user_tag

PRIVATE_CACHE_CONTROL = "private, no-cache"
PRIVATE_VARY = "Cookie, Authorization"
# A header longer than this is not a list of our ETags; treat it as "no match" cheaply.
_MAX_IF_NONE_MATCH = 8192


@dataclass(frozen=True)
class Representation:
    """A rendered response body and its strong validator."""

    body: bytes
    etag: str
    media_type: str = "application/json"

    def dump(self) -> list[Any]:
        return [self.body, self.etag, self.media_type]

    @classmethod
    def load(cls, raw: Any) -> Representation:
        """From what `dump` stored; ValueError for anything else (a corrupt entry is a miss)."""
        if not isinstance(raw, list) or len(raw) != 3:
            raise ValueError("not a cached representation")
        body, etag, media_type = raw
        if not isinstance(body, bytes) or not isinstance(etag, str) or not etag.startswith('"'):
            raise ValueError("not a cached representation")
        return cls(body, etag, str(media_type))


def render_json(value: Any) -> bytes:
    """Canonical JSON bytes: the same value renders to the same bytes in every process."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def strong_etag(body: bytes) -> str:
    """A strong ETag for exactly these bytes (RFC 9110 §8.8.3)."""
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return '"' + base64.urlsafe_b64encode(digest).rstrip(b"=").decode() + '"'


def represent_json(value: Any) -> Representation:
    body = render_json(value)
    return Representation(body, strong_etag(body))


def if_none_match(header: str | None, etag: str) -> bool:
    """True when `header` (If-None-Match) names `etag`: the client's copy is current.

    Weak comparison, as RFC 9110 §13.1.2 prescribes for If-None-Match (`W/"x"` matches `"x"`);
    `*` matches any current representation. A malformed header matches nothing.
    """
    if not header or len(header) > _MAX_IF_NONE_MATCH:
        return False
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == opaque for candidate in header.split(","))


def public_cache_control(max_age: int) -> str:
    return f"public, max-age={max(int(max_age), 0)}"


def respond(
    request: Request,
    representation: Representation,
    cache_control: str,
    vary: str | None = None,
) -> Response:
    """200 with the body, or 304 without it when the client's If-None-Match is current.

    A 304 carries the same ETag, Cache-Control and Vary a 200 would (RFC 9110 §15.4.5).
    """
    headers = {"ETag": representation.etag, "Cache-Control": cache_control}
    if vary:
        headers["Vary"] = vary
    if if_none_match(request.headers.get("if-none-match"), representation.etag):
        return Response(status_code=304, headers=headers)
    return Response(representation.body, media_type=representation.media_type, headers=headers)


def _first_header(scope: Scope, name: bytes) -> str | None:
    for header, value in scope["headers"]:
        if header == name:
            return value.decode("latin-1")
    return None


# An answer as raw ASGI sends it: status, header fields, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class RepresentationAnswers:
    """`respond` for a raw ASGI endpoint (`upak.web.hot_routes`) under one policy: the same
    status, headers (in the same order) and body, without building a Request or a Response.
    The header fields of the representation answered last are kept encoded: a hit hands back
    the same object (the cache's `immutable` lookup), so a repeated answer costs a list copy."""

    def __init__(self, cache_control: bytes, vary: bytes | None) -> None:
        self.cache_control = cache_control
        self.vary = vary
        self._last: tuple[Representation, tuple[Any, ...], tuple[Any, ...]] | None = None

    def answer(self, scope: Scope, representation: Representation) -> Answer:
        last = self._last
        if last is None or last[0] is not representation:
            last = self._last = (representation, *self._fields(representation))
        _, not_modified, full = last
        # Fresh lists: layers outside may change an answer's header list in place (CORS).
        if if_none_match(_first_header(scope, b"if-none-match"), representation.etag):
            return 304, list(not_modified), b""
        return 200, list(full), representation.body

    def _fields(self, representation: Representation) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        headers = [
            (b"etag", representation.etag.encode("latin-1")),
            (b"cache-control", self.cache_control),
        ]
        if self.vary:
            headers.append((b"vary", self.vary))
        full = [
            *headers,
            (b"content-length", b"%d" % len(representation.body)),
            (b"content-type", representation.media_type.encode("latin-1")),
        ]
        return tuple(headers), tuple(full)


async def cached_representation(
    cache: Cache,
    key: str,
    load: Callable[[], Awaitable[Any]],
    *,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    prefetched: PrefetchedRead | None = None,
) -> Representation:
    """The rendered JSON of `await load()`, from the cache (computed once on a miss);
    `prefetched`: the cache's read of it, started earlier (`Cache.prefetch`)."""

    async def render() -> Representation:
        return represent_json(await load())

    return await cache.get_or_compute(
        key,
        render,
        ttl,
        tags,
        codec="msgpack",
        dump=Representation.dump,
        load=Representation.load,
        prefetched=prefetched,
        immutable=True,  # a frozen pair of bytes and str: one decoded copy serves every hit
    )


async def public_json(
    request: Request,
    cache: Cache,
    key: str,
    load: Callable[[], Awaitable[Any]],
    *,
    max_age: int,
    ttl: float | None = None,
    tags: Iterable[str] = (),
) -> Response:
    """A public read served from the cache: `public, max-age`, strong ETag, 304."""
    representation = await cached_representation(cache, key, load, ttl=ttl, tags=tags)
    return respond(request, representation, public_cache_control(max_age))


async def private_json(
    request: Request,
    cache: Cache,
    user_id: Any,
    name: str,
    load: Callable[[], Awaitable[Any]],
    *,
    ttl: float | None = None,
    tags: Iterable[str] = (),
) -> Response:
    """A per-user read served from the cache under the user's key and tag: private, ETag, 304.

    `cache.invalidate_user(user_id)` drops it (e.g. on a subscription change).
    """
    representation = await private_representation(cache, user_id, name, load, ttl=ttl, tags=tags)
    return respond(request, representation, PRIVATE_CACHE_CONTROL, vary=PRIVATE_VARY)


async def private_representation(
    cache: Cache,
    user_id: Any,
    name: str,
    load: Callable[[], Awaitable[Any]],
    *,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    prefetched: PrefetchedRead | None = None,
) -> Representation:
    """What `private_json` answers, before it is a response: under the user's key and tag.
    `prefetched`: `prefetch_private(cache, user_id, name, tags)`, started earlier."""
    return await cached_representation(
        cache,
        user_key(user_id, name),
        load,
        ttl=ttl,
        tags=(*tags, user_tag(user_id)),
        prefetched=prefetched,
    )


def prefetch_private(
    cache: Cache, user_id: Any, name: str, tags: Iterable[str] = ()
) -> PrefetchedRead:
    """The read `private_representation(cache, user_id, name, …, tags=tags)` makes, now."""
    return cache.prefetch(user_key(user_id, name), (*tags, user_tag(user_id)))

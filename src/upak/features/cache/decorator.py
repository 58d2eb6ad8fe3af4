"""`@cache.cached(...)`: an async function's results cached, keyed explicitly."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from upak.features.cache.codec import Codec
from upak.features.cache.names import _safe, digest, user_key, user_tag

if TYPE_CHECKING:
    from upak.features.cache.client import Cache

T = TypeVar("T")
P = ParamSpec("P")


def cached(
    cache: Cache,
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
            return await cache.get_or_compute(
                key,
                lambda: fn(*args, **kwargs),
                ttl,
                entry_tags,
                stale_ttl=stale_ttl,
                codec=codec,
            )

        return wrapper

    return decorate

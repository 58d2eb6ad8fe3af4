"""A test-only guard: every script fails a call that touches a key it was not given.

Redis Cluster refuses a script's key only when it hashes to another slot; a key of the same
slot that the script derives for itself (or one on a standalone Redis, or under Sentinel)
goes through. So the suite runs every script behind this preamble, on every Redis topology:
before each `redis.call`/`redis.pcall` it asks the server which arguments of that command are
keys (`COMMAND GETKEYS`) and raises unless each is one of KEYS, or starts with a KEYS entry
the operation declares a family prefix (`Operation.families`).

`RedisStore._script` is the one place a store reads a script's text; `guard_scripts` puts the
preamble there for the length of a test. The memory twins are held to the same keys: on the
memory and host-tier topologies every twin gets its MemoryData behind `KeyCheckedData`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from upak.store.host import HostStore
from upak.store.memory import MemoryData, MemoryStore
from upak.store.operation import Operation
from upak.store.redis import RedisStore

# `redis` is shadowed by a local table for the script that follows (Redis 7 keeps the real
# one read-only); commands without keys (TIME) make GETKEYS fail, which means "no keys".
_PREAMBLE = """
local __redis = redis
local __declared = {}
for _, k in ipairs(KEYS) do __declared[k] = true end
local __families = {%(families)s}
local function __check(...)
  local ok, touched = pcall(__redis.call, 'COMMAND', 'GETKEYS', ...)
  if not ok then return end
  for _, k in ipairs(touched) do
    local declared = __declared[k]
    for _, i in ipairs(__families) do
      if not declared and string.sub(k, 1, #KEYS[i]) == KEYS[i] then declared = true end
    end
    if not declared then
      error({err = 'ERR key guard: ' .. tostring((...)) .. ' touches undeclared key ' .. k})
    end
  end
end
local redis = setmetatable({
  call = function(...) __check(...) return __redis.call(...) end,
  pcall = function(...) __check(...) return __redis.pcall(...) end,
}, {__index = __redis})
"""


def guarded_lua(op: Operation[Any, Any]) -> str:
    """`op`'s script behind the key guard (Lua counts KEYS from 1)."""
    families = ", ".join(str(i + 1) for i in op.families)
    return _PREAMBLE % {"families": families} + op.lua


class UndeclaredKey(AssertionError):
    """A memory twin touched a key its operation was not given."""


# MemoryData's methods that name keys: their first argument (every argument for `delete`).
_KEYED = frozenset(
    [
        "entry",
        "put",
        "exists",
        "delete",
        "pttl",
        "pexpire",
        "get",
        "set",
        "hset",
        "hget",
        "hgetall",
        "zadd",
        "zrem",
        "zcard",
        "zrange_withscores",
    ]
)
# Bookkeeping of the memory side only, never sent to Redis: the session mirror's registry.
_MEMORY_ONLY_SUFFIXES = ("sessions:mirror",)


class KeyCheckedData:
    """A MemoryData that raises UndeclaredKey on a key outside the call's keys and families."""

    def __init__(self, data: MemoryData, keys: Sequence[str], families: Sequence[int]) -> None:
        self._data = data
        self._keys = set(keys)
        self._prefixes = tuple(keys[i] for i in families)

    def _check(self, key: object) -> None:
        if not isinstance(key, str) or key in self._keys or key.startswith(self._prefixes):
            return
        if key.endswith(_MEMORY_ONLY_SUFFIXES):
            return
        raise UndeclaredKey(f"the memory twin touches undeclared key {key}")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._data, name)
        if name not in _KEYED:
            return attr

        def checked(*args: Any, **kwargs: Any) -> Any:
            for key in args if name == "delete" else args[:1]:
                self._check(key)
            return attr(*args, **kwargs)

        return checked


def _checked_twin(op: Operation[Any, Any], twin: Callable[..., Any] | None) -> Callable[..., Any]:
    run = twin or op.memory
    return lambda data, keys, args: run(KeyCheckedData(data, keys, op.families), keys, args)


def guard_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every RedisStore runs every script behind the key guard, and every memory twin runs
    on key-checked data, until the test ends."""
    monkeypatch.setattr(RedisStore, "_script", lambda self, op: guarded_lua(op))
    for store in (MemoryStore, HostStore):
        execute = store.execute

        def guarded(self, op, keys, args, entry=None, twin=None, _execute=execute, **kwargs):  # type: ignore[no-untyped-def]
            return _execute(self, op, keys, args, entry, twin=_checked_twin(op, twin), **kwargs)

        monkeypatch.setattr(store, "execute", guarded)

"""A test-only guard: every script fails a call that touches a key it was not given.

Redis Cluster refuses a script's key only when it hashes to another slot; a key of the same
slot that the script derives for itself (or one on a standalone Redis, or under Sentinel)
goes through. So the suite runs every script behind this preamble, on every Redis topology:
before each `redis.call`/`redis.pcall` it asks the server which arguments of that command are
keys (`COMMAND GETKEYS`) and raises unless each is one of KEYS, or starts with a KEYS entry
the operation declares a family prefix (`Operation.families`).

`RedisStore._script` is the one place a store reads a script's text; `guard_scripts` puts the
preamble there for the length of a test.
"""

from __future__ import annotations

from typing import Any

import pytest

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


def guard_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every RedisStore runs every script behind the key guard until the test ends."""
    monkeypatch.setattr(RedisStore, "_script", lambda self, op: guarded_lua(op))

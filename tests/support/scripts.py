"""Lua scripts the tests run on a real Redis to make it misbehave on purpose."""

from __future__ import annotations

# Busy for ARGV[1] ms on the server's clock, then answers "slow": a server that is slow to
# answer one call, without pausing the process.
BUSY_LUA = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
repeat
  t = redis.call('TIME')
until tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 - start >= tonumber(ARGV[1])
return 'slow'
"""

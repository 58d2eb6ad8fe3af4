"""Caching over the store: TTLs, single-flight, stale-while-revalidate, tags, a decorator.

The seed's third use of Redis ("caching: better performance"; in fallback mode "caching is
disabled"). What holds, and how:

* **Outage = caching per host, or off.** Every read/write operation here declares
  `Fallback.HOST`: while Redis is away they run on the host tier when the service is one host
  (every worker's invalidation lands there too, and the tier forgets the outage's entries when
  it ends); otherwise (several hosts, process memory) a read is a miss, a write is dropped,
  and the caller's source answers. Nothing is ever cached in process memory. Deletes and tag
  invalidations run on the fallback's twin and are *written back* when Redis returns, so an
  invalidation made during an outage still removes the entry Redis kept (no old `/me` after
  recovery).
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

The package, one job a module: `codec` (the entry's bytes), `names` (keys, tags, digests),
`operations` (the scripts and their twins), `client` (the Cache), `decorator` (`cached`).
Import from here: every name callers used before the split is re-exported.
"""

from __future__ import annotations

from upak.features.cache.client import Cache, CacheStats, PrefetchedRead, TagSnapshot
from upak.features.cache.codec import (
    CacheDecodeError,
    Codec,
    Entry,
    decode_value,
    encode_value,
    pack_entry,
    unpack_entry,
)
from upak.features.cache.names import digest, user_key, user_tag
from upak.features.cache.operations import (
    BYPASSED,
    CACHING_OFF,
    LEASE,
    READ,
    RELEASE,
    STAMP,
    WRITE,
)

__all__ = [
    "BYPASSED",
    "CACHING_OFF",
    "LEASE",
    "READ",
    "RELEASE",
    "STAMP",
    "WRITE",
    "Cache",
    "CacheDecodeError",
    "CacheStats",
    "Codec",
    "Entry",
    "PrefetchedRead",
    "TagSnapshot",
    "decode_value",
    "digest",
    "encode_value",
    "pack_entry",
    "unpack_entry",
    "user_key",
    "user_tag",
]

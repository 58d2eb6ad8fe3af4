"""Server-side sessions in the store: one login = one record, shared by every worker.

The cookie is `<user id>.<token>`, the token 256 bits from `secrets`. The store never holds
the token: a session's key ends in its *handle*, the first 128 bits of SHA-256(token), so a
dump of Redis does not hand out live sessions, and the handle doubles as the public id that
`GET /auth/sessions` shows and `DELETE /auth/sessions/{id}` takes. The user id in the cookie
is only routing: it names the hash tag every key of that user shares (one Cluster slot, so
"revoke all my other sessions" is one atomic script); a forged id points at keys where the
token's handle does not exist.

Keys of user 42 (`KeySpace.tagged`, tag `u42`):
    sessions:{u42}:s:<handle>  hash  c=created ms, s=last seen ms, a=absolute end ms, i=ip, ua
    sessions:{u42}:index       zset  handle -> created ms (listing, revoke-all, per-user cap)
    sessions:{u42}:floor       hash  t=ms, k=handle: sessions created before t, except k,
                                     were revoked ("log out everywhere else")
    sessions:{u42}:t:<handle>  str   tombstone of a revoked session, for its remaining life

Time is the app's clock, passed to every script (`now`), so expiry is decided the same way on
Redis and on memory and tests move time instead of sleeping; Redis TTLs only collect garbage.

Outage (the seed's fallback: sessions from process memory). Creating, touching and revoking
are journaled (`writeback`) and replayed on Redis at recovery, with TTLs recomputed for the
time that passed, so a login made during the outage works on every worker afterwards and a
logout made during it stays a logout. Nothing is brought back, in whatever order workers
(or services sharing the Redis) write back: touches only ever change a session that still
exists, a create replayed after a "log out everywhere else" is refused by the floor, and one
replayed after its own logout by the session's tombstone (written by every revoke, on Redis
and on memory, for as long as the session could have lived). A session read from Redis is
mirrored into this process's memory (bounded: see MIRROR_TTL_MS / MIRROR_MAX_SESSIONS) so a
user active just before an outage stays logged in on the worker that served them. The mirror
outlives a recovery (two outages in a row log nobody out); after each recovery every mirrored
session Redis no longer has is dropped (`SessionManager.confirm_mirror`).

The package, one job a module: `cookies` (the cookie and the handle), `records` (what it hands
out), `stored` (the stored shape every twin reads), `mirror` (the outage copy and CONFIRM),
`login` (CREATE), `lookup` (RESOLVE, TOUCH, LIST), `revocation` (REVOKE, REVOKE_OTHERS),
`manager` (SessionManager). Each operation's argument record sits next to it (NewSession,
Use, Touch, Listing, Revocation, RevokeOthers, Mirrored); scripts that find sessions in the
index touch `<the user's session prefix>..handle`, the prefix passed as a key family
(`Operation.families`), never derived from another key. Import from here: every name
callers used before the split is re-exported.
"""

from __future__ import annotations

from upak.features.sessions.cookies import (
    HANDLE_HEX,
    MAX_COOKIE_VALUE,
    TOKEN_BYTES,
    SessionCookie,
    handle_of,
    is_handle,
    parse_cookie,
)
from upak.features.sessions.login import CREATE, FLOOR_SKEW_MS, NewSession
from upak.features.sessions.lookup import LIST, RESOLVE, TOUCH, Listing, Touch, Use
from upak.features.sessions.manager import (
    FEATURE,
    MAX_SESSIONS_PER_USER,
    MAX_USER_AGENT,
    SessionManager,
)
from upak.features.sessions.mirror import (
    CONFIRM,
    CONFIRM_BATCH,
    MIRROR_MAX_SESSIONS,
    MIRROR_TTL_MS,
    Mirrored,
)
from upak.features.sessions.mirror import _mirror as _mirror  # its memory cost is measured
from upak.features.sessions.records import IssuedSession, LoginSession
from upak.features.sessions.revocation import REVOKE, REVOKE_OTHERS, Revocation, RevokeOthers

__all__ = [
    "CONFIRM",
    "CONFIRM_BATCH",
    "CREATE",
    "FEATURE",
    "FLOOR_SKEW_MS",
    "HANDLE_HEX",
    "LIST",
    "MAX_COOKIE_VALUE",
    "MAX_SESSIONS_PER_USER",
    "MAX_USER_AGENT",
    "MIRROR_MAX_SESSIONS",
    "MIRROR_TTL_MS",
    "RESOLVE",
    "REVOKE",
    "REVOKE_OTHERS",
    "TOKEN_BYTES",
    "TOUCH",
    "IssuedSession",
    "Listing",
    "LoginSession",
    "Mirrored",
    "NewSession",
    "Revocation",
    "RevokeOthers",
    "SessionCookie",
    "SessionManager",
    "Touch",
    "Use",
    "handle_of",
    "is_handle",
    "parse_cookie",
]

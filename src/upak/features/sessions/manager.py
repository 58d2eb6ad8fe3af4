"""SessionManager: the policy over the operations (keys, clock, renewal, the per-user cap)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

from upak.features.sessions.cookies import TOKEN_BYTES, SessionCookie, handle_of, is_handle
from upak.features.sessions.login import CREATE, NewSession
from upak.features.sessions.lookup import LIST, RESOLVE, TOUCH, Listing, Touch, Use
from upak.features.sessions.mirror import CONFIRM, CONFIRM_BATCH, Mirrored, _MirrorRegistry
from upak.features.sessions.records import IssuedSession, LoginSession
from upak.features.sessions.revocation import REVOKE, REVOKE_OTHERS, Revocation, RevokeOthers
from upak.store import KeySpace, MemoryData, Store

FEATURE = "sessions"
MAX_SESSIONS_PER_USER = 100  # past it a new login ends the user's oldest session
MAX_USER_AGENT = 256


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


class SessionManager:
    """Creates, resolves, lists and revokes sessions; all state lives in the store."""

    def __init__(
        self,
        store: Store,
        keys: KeySpace,
        *,
        idle_timeout: int,
        max_age: int,
        clock: Callable[[], float] = time.time,
        max_per_user: int = MAX_SESSIONS_PER_USER,
    ) -> None:
        self.store = store
        self.keys = keys
        self.idle_ms = idle_timeout * 1000
        self.max_age_ms = max_age * 1000
        self.clock = clock
        self.max_per_user = max_per_user
        # Renewing on every request would be a write per request; renewing at most this
        # often keeps the idle timeout exact to within it.
        self.touch_every_ms = min(60_000, self.idle_ms // 10)
        store.on_recovery(self.confirm_mirror)

    def __repr__(self) -> str:
        return f"SessionManager(idle={self.idle_ms // 1000}s, max_age={self.max_age_ms // 1000}s)"

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _tag(self, user_id: int) -> str:
        return f"u{user_id}"

    def _session_key(self, user_id: int, handle: str) -> str:
        return self.keys.tagged(FEATURE, self._tag(user_id), "s", handle)

    def _index_key(self, user_id: int) -> str:
        return self.keys.tagged(FEATURE, self._tag(user_id), "index")

    def _floor_key(self, user_id: int) -> str:
        return self.keys.tagged(FEATURE, self._tag(user_id), "floor")

    def _tomb_key(self, user_id: int, handle: str) -> str:
        return self.keys.tagged(FEATURE, self._tag(user_id), "t", handle)

    def _sessions_family(self, user_id: int) -> str:
        # The prefix of every `_session_key` of the user: scripts that find sessions in the
        # index (the cap, LIST, REVOKE_OTHERS) touch `prefix .. handle`, declared by it.
        return self._session_key(user_id, "")

    async def confirm_mirror(self, memory: MemoryData) -> None:
        """After an outage: drop every mirrored session Redis no longer has (revoked on
        another worker or service meanwhile), so the next outage cannot serve it here."""
        registry = memory.entry(self.keys.key(FEATURE, "mirror"), _MirrorRegistry)
        if not registry:
            return
        mirrored = list(registry.items())
        for start in range(0, len(mirrored), CONFIRM_BATCH):
            await asyncio.gather(
                *(
                    self.store.run(
                        CONFIRM, [session_key, index_key], Mirrored(session_key.rsplit(":", 1)[1])
                    )
                    for session_key, index_key in mirrored[start : start + CONFIRM_BATCH]
                )
            )

    async def create(self, user_id: int, ip: str = "", user_agent: str = "") -> IssuedSession:
        """A new session with a fresh token (never one the client offered)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        handle = handle_of(token)
        now = self._now_ms()
        abs_end = now + self.max_age_ms
        user_agent = user_agent[:MAX_USER_AGENT]
        keys = [
            self._session_key(user_id, handle),
            self._index_key(user_id),
            self._floor_key(user_id),
            self._tomb_key(user_id, handle),
            self._sessions_family(user_id),
        ]
        created = await self.store.run(
            CREATE,
            keys,
            NewSession(handle, now, abs_end, self.idle_ms, now, ip, user_agent, self.max_per_user),
        )
        if not created:  # only a replay can be refused; a fresh login never is
            raise RuntimeError("the store refused a fresh session")
        session = LoginSession(
            user_id, handle, now / 1000, now / 1000, abs_end / 1000, ip, user_agent
        )
        return IssuedSession(session, f"{user_id}.{token}")

    async def resolve(self, cookie: SessionCookie) -> LoginSession | None:
        """The live session this cookie names, renewed by this use; None if there is none."""
        handle = cookie.handle
        session_key = self._session_key(cookie.user_id, handle)
        now = self._now_ms()
        reply = await self.store.run(
            RESOLVE, [session_key, self._index_key(cookie.user_id)], Use(handle, now, self.idle_ms)
        )
        if reply is None:
            return None
        created, seen, abs_end = (int(v) for v in reply[:3])
        if now - seen >= self.touch_every_ms:
            if not await self.store.run(TOUCH, [session_key], Touch(now, self.idle_ms, now)):
                return None  # revoked between the two calls: this request does not use it
            seen = now
        return LoginSession(
            cookie.user_id,
            handle,
            created / 1000,
            seen / 1000,
            abs_end / 1000,
            _text(reply[3]),
            _text(reply[4]),
        )

    async def list(self, user_id: int) -> list[LoginSession]:
        """The user's live sessions, most recently used first."""
        now = self._now_ms()
        keys = [self._index_key(user_id), self._sessions_family(user_id)]
        rows = await self.store.run(LIST, keys, Listing(now, self.idle_ms))
        sessions = [
            LoginSession(
                user_id,
                _text(handle),
                int(c) / 1000,
                int(s) / 1000,
                int(a) / 1000,
                _text(ip),
                _text(ua),
            )
            for handle, c, s, a, ip, ua in rows
        ]
        return sorted(sessions, key=lambda s: (s.last_seen_at, s.created_at), reverse=True)

    async def revoke(self, user_id: int, handle: str) -> bool:
        """End one of this user's sessions. False when the user has no session `handle`."""
        if not is_handle(handle):
            return False
        keys = [
            self._session_key(user_id, handle),
            self._index_key(user_id),
            self._tomb_key(user_id, handle),
        ]
        return await self.store.run(
            REVOKE, keys, Revocation(handle, self._now_ms(), self.max_age_ms)
        )

    async def revoke_others(self, user_id: int, keep_handle: str) -> int:
        """End every session of the user except `keep_handle`; returns how many ended."""
        return await self.store.run(
            REVOKE_OTHERS,
            [self._index_key(user_id), self._floor_key(user_id), self._sessions_family(user_id)],
            RevokeOthers(keep_handle, self._now_ms(), self.max_age_ms),
        )

"""Webhook intake: verified-and-claimed deliveries per second, next to `standardwebhooks` verify.

The same signed payloads (YooKassa notifications signed by the official package) go through:
  ours: Standard Webhooks verification + a claim in the replay gate on a private Redis
        (and the full gate, claim + finish), 64 concurrent deliveries, auto-pipelined;
  peer: `standardwebhooks.Webhook.verify(..., json_parse=False)` alone (no replay protection
        at all, no JSON parse, as ours), in a loop; verify alone is timed in paired rounds.
Run: .venv/bin/python bench/webhooks.py
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from common import (
    Result,
    Row,
    alternating,
    measure_rate,
    redis_server,
)  # puts the repository on sys.path
from rates import mean

from tests.support.webhooks import SECRET, notification  # isort: skip
from upak.config import load_settings
from upak.features.replay import ClaimState, ReplayGuard, ReplayWindows
from upak.features.signatures import SigningKeys, verify
from upak.store import KeySpace, MemoryStore, build_store

PAYLOADS = 100_000
SECONDS = 2.0
CONCURRENCY = 64
NO_GATE = "standardwebhooks verify (json_parse=False), no gate"
PEER_SETUP = (
    "standardwebhooks 1.x Webhook(secret).verify(body, headers, json_parse=False): the "
    "signature and timestamp checks alone, like ours, no JSON parse"
)
DISTINCT = f"{PAYLOADS:,} distinct signed notifications round robin"
GATE_SETUP = (
    f"ours: {CONCURRENCY} concurrent deliveries on a private redis-server, every one a fresh "
    f"claim ({DISTINCT}); peer: the verify-alone figure above (1 caller, no replay gate): "
    "the ratio is what the gate costs, not a like-for-like race"
)


def synchronous(rate, payloads):  # type: ignore[no-untyped-def]
    """A plain-loop rate function as a meter for bench/rates.py's paired rounds."""

    async def measure(seconds: float) -> float:
        return rate(payloads, seconds)

    return measure


def signed_payloads(count: int) -> list[tuple[bytes, dict[str, str]]]:
    """`count` distinct notifications, each signed by the official package."""
    template = notification()
    template_id = template.split(b'"id": "', 1)[1].split(b'"', 1)[0]
    signer = Webhook(SECRET)
    moment = datetime.now(UTC)
    stamp = str(int(moment.timestamp()))
    out = []
    for _ in range(count):
        body = template.replace(template_id, str(uuid.uuid4()).encode())
        msg_id = f"msg_{uuid.uuid4().hex}"
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": signer.sign(msg_id, moment, body.decode()),
        }
        out.append((body, headers))
    return out


def peer_rate(payloads: list[tuple[bytes, dict[str, str]]], seconds: float) -> float:
    hook = Webhook(SECRET)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for body, headers in payloads[done % len(payloads) : done % len(payloads) + 256]:
            hook.verify(body, headers, json_parse=False)
        done += 256
    return done / (time.perf_counter() - started)


def ours_verify_rate(payloads: list[tuple[bytes, dict[str, str]]], seconds: float) -> float:
    keys = SigningKeys.from_setting(SECRET)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        now = time.time()
        for body, headers in payloads[done % len(payloads) : done % len(payloads) + 256]:
            verify(keys, headers, body, now=now, tolerance=300)
        done += 256
    return done / (time.perf_counter() - started)


async def gate_rate(guard: ReplayGuard, payloads, run: str, *, finish: bool) -> float:
    keys = SigningKeys.from_setting(SECRET)
    calls = claimed = 0

    async def deliver(i: int) -> None:
        # A running count, not `i`: on the memory store one task may run the whole time.
        nonlocal calls, claimed
        # Past the end of the pool the same payloads come again under a new scope, so every
        # delivery is still a fresh claim (a duplicate would be a cheaper, flattering call).
        lap, index = divmod(calls, len(payloads))
        body, headers = payloads[index]
        calls += 1
        delivery = verify(keys, headers, body, now=time.time(), tolerance=300)
        claim = await guard.claim(f"{run}{lap}", delivery.id)
        if claim.state is ClaimState.CLAIMED:
            claimed += 1
            if finish:
                await guard.finish(claim)

    rate = await measure_rate(deliver, concurrency=CONCURRENCY, seconds=SECONDS)
    # Every delivery must be a fresh claim, or the figure would include cheap duplicates.
    if claimed != calls:
        raise SystemExit(f"only {claimed} of {calls} deliveries were fresh claims")
    return rate


async def main() -> None:
    result = Result("webhooks", "Webhook intake: verify + replay claim vs standardwebhooks verify")
    print(f"signing {PAYLOADS:,} notifications with standardwebhooks ...")
    payloads = signed_payloads(PAYLOADS)
    windows = ReplayWindows(tolerance=300, horizon=72 * 3600)
    with redis_server() as server:
        settings = load_settings(env_file=None, redis_url=server.url, redis_key_prefix="bench:")
        store = build_store(settings)
        await store.start()
        try:
            guard = ReplayGuard(store, KeySpace("bench:"), windows)
            rates = await alternating(
                {
                    "ours": synchronous(ours_verify_rate, payloads),
                    "peer": synchronous(peer_rate, payloads),
                },
                seconds=SECONDS,
            )
            peer = mean(rates["peer"])
            print(f"{'metric':<60} {'ours':>12} {'':6} {'peer':>28} {'ratio':>7}")
            result.add(
                Row(
                    "verify alone, deliveries/s, 1 caller",
                    mean(rates["ours"]),
                    peer,
                    "standardwebhooks verify, json_parse=False",
                    setup=f"1 caller, a plain loop each; {DISTINCT}; both warmed, paired rounds "
                    f"in alternating order; peer: {PEER_SETUP}",
                )
            )
            claim_rate = await gate_rate(guard, payloads, "claim", finish=False)
            result.add(
                Row(
                    f"verify + claim on Redis, deliveries/s, {CONCURRENCY} concurrent",
                    claim_rate,
                    peer,
                    NO_GATE,
                    setup=GATE_SETUP,
                )
            )
            full_rate = await gate_rate(guard, payloads, "full", finish=True)
            result.add(
                Row(
                    f"verify + claim + finish on Redis, deliveries/s, {CONCURRENCY} concurrent",
                    full_rate,
                    peer,
                    NO_GATE,
                    setup=GATE_SETUP,
                )
            )
        finally:
            await store.close()
    memory_guard = ReplayGuard(MemoryStore(), KeySpace("bench:"), windows)
    memory_rate = await gate_rate(memory_guard, payloads, "memory", finish=True)
    result.add(
        Row(
            f"verify + claim + finish in memory (outage), deliveries/s, {CONCURRENCY} concurrent",
            memory_rate,
            peer,
            NO_GATE,
            setup=GATE_SETUP.replace("on a private redis-server", "on the memory store"),
        )
    )
    result.notes.append(
        f"{PAYLOADS:,} distinct YooKassa notifications signed by standardwebhooks. Verify "
        "alone: ours and the peer each in a plain loop (1 caller), the peer configured like "
        "ours (json_parse=False: no JSON parse), both warmed, paired rounds in alternating "
        f"order. The gate rows: ours at concurrency {CONCURRENCY} on a private redis-server "
        "(auto-pipelined EVALSHA) or on the memory store, next to the peer's verify alone, "
        "which has no replay protection: they say what the gate costs."
    )
    result.write()


if __name__ == "__main__":
    asyncio.run(main())

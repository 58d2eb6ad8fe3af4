"""Connecting the way production does: requirepass, an ACL user, TLS, Sentinel and Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.exceptions

from tests.conftest import make_settings
from tests.support.redis_servers import (
    RedisCluster,
    RedisServer,
    SentinelSet,
    make_tls_files,
    redis_server,
    start_sentinel_set,
)
from upak.config import Settings
from upak.store import FailoverStore, KeySpace, Mode, Operation, StoreError, build_store
from upak.store.operation import NO_ARGS, NoArgs


@pytest.fixture(scope="module")
def secured_redis() -> Iterator[RedisServer]:
    with redis_server(
        password="default-pw-1234",
        config={
            "user": "upak_app on >app-pw-5678 ~upak:* &* -@all +@read +@write +@scripting "
            "+ping +client +info"
        },
    ) as server:
        yield server


async def started(settings: Settings) -> FailoverStore:
    store = build_store(settings)
    await store.start()
    return store


async def exercise(store: FailoverStore, keys: KeySpace) -> None:
    """The contract's primitives, end to end, on whatever topology `store` points at."""
    claims = await asyncio.gather(
        *(store.claim_once(keys.key("replay", "x"), 10_000) for _ in range(20))
    )
    assert claims.count(True) == 1
    await store.set(keys.key("cache", "v"), "value", 10_000)
    assert await store.get(keys.key("cache", "v")) == b"value"
    assert await store.delete(keys.key("cache", "v")) is True
    assert store.mode is Mode.REDIS and store.stats.fallback_calls == 0


async def test_requirepass(secured_redis: RedisServer, key_prefix: str) -> None:
    store = await started(
        make_settings(
            redis_port=secured_redis.port, redis_host="127.0.0.1", redis_password="default-pw-1234"
        )
    )
    try:
        await exercise(store, KeySpace("upak:" + key_prefix))
    finally:
        await store.close()


async def test_wrong_password_serves_from_memory_and_never_leaks(
    secured_redis: RedisServer,
) -> None:
    store = await started(
        make_settings(redis_url=f"redis://:wrong-pw-999@127.0.0.1:{secured_redis.port}/0")
    )
    try:
        assert store.mode is Mode.MEMORY
        assert "AuthenticationError" in (store.stats.last_error or "")
        text = f"{store.stats!r} {store.stats.as_dict()} {store.target}"
        assert "wrong-pw-999" not in text
        assert await store.claim_once("upak:replay:y", 1000) is True  # served, from memory
    finally:
        await store.close()


async def test_acl_user(secured_redis: RedisServer, key_prefix: str) -> None:
    store = await started(
        make_settings(redis_url=f"redis://upak_app:app-pw-5678@127.0.0.1:{secured_redis.port}/0")
    )
    try:
        await exercise(store, KeySpace("upak:" + key_prefix))
    finally:
        await store.close()


async def test_tls(tmp_path, key_prefix: str) -> None:
    files = make_tls_files(tmp_path / "tls")
    with redis_server(tls=files) as server:
        store = await started(
            make_settings(
                redis_url=f"rediss://127.0.0.1:{server.port}/0", redis_ssl_ca_certs=files["ca"]
            )
        )
        try:
            await exercise(store, KeySpace("upak:" + key_prefix))
        finally:
            await store.close()


async def test_tls_against_a_plain_port_is_an_outage_not_a_crash(shared_redis: RedisServer) -> None:
    store = await started(make_settings(redis_url=f"rediss://127.0.0.1:{shared_redis.port}/0"))
    try:
        assert store.mode is Mode.MEMORY
    finally:
        await store.close()


@pytest.fixture
async def cluster_store(cluster: RedisCluster) -> AsyncIterator[FailoverStore]:
    store = await started(make_settings(redis_url=cluster.url))
    yield store
    await store.close()


@pytest.mark.slow
async def test_cluster_runs_the_primitives(cluster_store: FailoverStore, key_prefix: str) -> None:
    await exercise(cluster_store, KeySpace("upak:" + key_prefix))


@pytest.mark.slow
async def test_cluster_pipelines_calls_across_slots(cluster_store: FailoverStore) -> None:
    keys = [f"upak:replay:{i}" for i in range(200)]  # spread over all three masters
    results = await asyncio.gather(*(cluster_store.claim_once(k, 10_000) for k in keys))
    assert all(results)
    again = await asyncio.gather(*(cluster_store.claim_once(k, 10_000) for k in keys))
    assert not any(again) and cluster_store.stats.fallback_calls == 0


@pytest.mark.slow
async def test_sentinel_master(sentinel_set: SentinelSet, key_prefix: str) -> None:
    store = await started(make_settings(redis_url=sentinel_set.url))
    try:
        await exercise(store, KeySpace("upak:" + key_prefix))
    finally:
        await store.close()


def _two_keys_memory(data, keys, args):
    return [data.get(keys[0]), data.get(keys[1])]


TWO_SLOTS = Operation(
    name="test_two_slots",
    lua="return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}",
    args=NoArgs,
    memory=_two_keys_memory,
)


@pytest.mark.slow
async def test_a_cross_slot_script_is_a_bug_not_an_outage(cluster_store: FailoverStore) -> None:
    # "a" and "b" hash to different slots: one operation's bug must not switch the store off.
    with pytest.raises(StoreError):
        await cluster_store.run(TWO_SLOTS, ["upak:a", "upak:b"], NO_ARGS)
    assert cluster_store.mode is Mode.REDIS and cluster_store.stats.fallback_calls == 0


@pytest.fixture
async def own_sentinel(
    key_prefix: str,
) -> AsyncIterator[tuple[SentinelSet, FailoverStore, KeySpace]]:
    """A master, replica and sentinel of this test's own (the shared set's users rely on its
    roles, which these tests change), and a store on them with a fast heartbeat."""
    group = await asyncio.to_thread(start_sentinel_set)
    try:
        store = await started(
            make_settings(redis_url=group.url, redis_socket_timeout=0.2, redis_health_interval=0.05)
        )
        try:
            yield group, store, KeySpace("upak:" + key_prefix)
        finally:
            await store.close()
    finally:
        group.stop()


@pytest.mark.slow
async def test_sentinel_failover_the_store_follows_the_new_master(own_sentinel) -> None:
    group, store, keys = own_sentinel
    before = keys.key("replay", "before")
    assert await store.claim_once(before, 60_000) is True
    deadline = asyncio.get_running_loop().time() + 20
    # Replication is asynchronous: a write the replica has not received is lost by any
    # failover, whatever the client does. Start once the replica has it.
    while not group.replica.client().exists(before):
        assert asyncio.get_running_loop().time() < deadline, "the replica never synced"
        await asyncio.sleep(0.05)
    sentinel = group.sentinel.client()
    while True:  # the sentinel needs a moment to learn of the replica before it can promote
        try:
            sentinel.execute_command("SENTINEL", "FAILOVER", group.service)
            break
        except redis.exceptions.ResponseError:
            assert asyncio.get_running_loop().time() < deadline, "no failover possible"
            await asyncio.sleep(0.2)
    # Sentinel names the new master as soon as it is promoted; the old one goes on
    # accepting writes until Sentinel demotes it, and its resync then discards them.
    new_master = group.replica.client()
    new_address = ("127.0.0.1", group.replica.port)

    def named_master() -> tuple[str, int]:
        host, port = sentinel.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", group.service)
        return (host.decode() if isinstance(host, bytes) else host, int(port))

    while named_master() != new_address:
        assert asyncio.get_running_loop().time() < deadline, "Sentinel did not switch"
        await asyncio.sleep(0.02)
    switched_at = asyncio.get_running_loop().time()
    n = 0
    while True:  # never an error, whatever the store is doing underneath
        key = keys.key("replay", f"during-{n}")
        n += 1
        assert await store.claim_once(key, 60_000) is True
        if new_master.exists(key):
            break
        await asyncio.sleep(0.02)
    # Within a few heartbeats (0.1 s here), not when Sentinel gets round to the demotion.
    assert asyncio.get_running_loop().time() - switched_at < 2.0
    after = keys.key("replay", "after")
    assert await store.claim_once(after, 60_000) is True
    assert new_master.exists(after) == 1
    assert await store.claim_once(before, 60_000) is False  # the replay is still known


@pytest.mark.slow
async def test_sentinels_gone_while_the_master_serves_is_no_outage(own_sentinel) -> None:
    group, store, keys = own_sentinel
    group.sentinel.kill()
    # Several heartbeats whose question to the sentinel fails (a lookup gives up at the
    # call timeout, 0.7 s here).
    await asyncio.sleep(2.5)
    assert store.mode is Mode.REDIS and store.stats.switches_to_memory == 0
    assert await store.claim_once(keys.key("replay", "x"), 60_000) is True
    assert group.master.client().exists(keys.key("replay", "x")) == 1

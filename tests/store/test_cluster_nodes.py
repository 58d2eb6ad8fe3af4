"""Redis Cluster degrades per master: one dead master sends only its own keys to memory.

A 3-master, 3-replica cluster of real redis-server processes; one master is killed -9 under
load. Keys on the healthy masters stay on Redis (a direct client finds their writes there),
keys on the dead one are served from memory and written back once its replica is promoted,
each slot range switches at most once each way (no flap), and no call fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot

from tests.conftest import make_settings
from tests.support.redis_servers import RedisCluster, RedisServer, start_cluster
from upak.store import ClusterFailoverStore, Mode, build_store
from upak.store.primitives import CLAIM_ONCE, Expiring

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[RedisCluster]:
    # A short node timeout: the replica of a killed master is promoted in about 2 s. Not
    # requiring full coverage is what lets the healthy masters serve meanwhile (README).
    group = start_cluster(3, replicas=1, node_timeout_ms=1000, full_coverage=False)
    yield group
    group.stop()


def keys_by_master(group: RedisCluster, prefix: str, per_master: int) -> dict[int, list[str]]:
    """`per_master` keys for each master, by the master's port."""
    spans = [
        (start, end, int(master[1]))
        for start, end, master, *_ in group.nodes[0].client().cluster("SLOTS")
    ]
    found: dict[int, list[str]] = {port: [] for *_, port in spans}
    n = 0
    while min(len(v) for v in found.values()) < per_master:
        key = f"upak:{prefix}:node:{n}"
        n += 1
        slot = key_slot(key.encode())
        port = next(port for start, end, port in spans if start <= slot <= end)
        if len(found[port]) < per_master:
            found[port].append(key)
    return found


DURABLE_CLAIM = dataclasses.replace(CLAIM_ONCE, name="durable_claim", durable=True)


@pytest.mark.parametrize("replicas, unconfirmed", [(1, False), (2, True)])
async def test_durable_writes_wait_for_each_nodes_replicas(
    replicated_cluster: RedisCluster, key_prefix: str, replicas: int, unconfirmed: bool
) -> None:
    """REDIS_WAIT_REPLICAS on Cluster: a WAIT behind each node's durable calls. Every master
    has one replica, so asking for two leaves the writes standing but unconfirmed."""
    keys = keys_by_master(replicated_cluster, f"{key_prefix}:wait{replicas}", per_master=5)
    settings = make_settings(redis_url=replicated_cluster.url, redis_wait_replicas=replicas)
    store = build_store(settings)
    await store.start()
    try:
        every = [k for port_keys in keys.values() for k in port_keys]
        claims = await asyncio.gather(
            *(store.run(DURABLE_CLAIM, [k], Expiring("1", 60_000)) for k in every)
        )
        assert all(claims) and store.mode is Mode.REDIS
        assert (store.redis.unconfirmed_writes > 0) is unconfirmed
        assert (store.redis.wait_timeouts > 0) is unconfirmed
    finally:
        await store.close()


async def test_a_hung_masters_calls_do_not_hold_the_others_of_their_step(
    replicated_cluster: RedisCluster, key_prefix: str
) -> None:
    """The calls of one loop step go to every node at once; a healthy node's callers get
    their replies when that node answers, not when the hung one times out."""
    group = replicated_cluster
    keys = keys_by_master(group, f"{key_prefix}:hung", per_master=1)
    hung_port, healthy_port = sorted(keys)[:2]
    hung: RedisServer = next(n for n in group.nodes if n.port == hung_port)
    settings = make_settings(
        redis_url=group.url, redis_socket_timeout=0.3, redis_connect_timeout=0.3
    )
    store = build_store(settings)
    await store.start()
    try:
        await store.set(keys[hung_port][0], "warm", 60_000)  # connections open
        await store.set(keys[healthy_port][0], "warm", 60_000)
        hung.pause()
        try:
            stuck = asyncio.create_task(store.get(keys[hung_port][0]))
            healthy = asyncio.create_task(store.get(keys[healthy_port][0]))
            # Well inside the hung node's 0.6 s call deadline (and the cluster's 1 s node
            # timeout: no failover), the healthy node's reply is in.
            done, _ = await asyncio.wait({healthy}, timeout=0.3)
            assert healthy in done and not stuck.done()
        finally:
            hung.resume()
        assert healthy.result() == b"warm"
        await stuck
    finally:
        await store.close()


async def test_one_dead_master_degrades_only_its_slots(
    replicated_cluster: RedisCluster, key_prefix: str
) -> None:
    group = replicated_cluster
    keys = keys_by_master(group, key_prefix, per_master=20)
    victim_port = sorted(keys)[0]
    victim: RedisServer = next(n for n in group.nodes if n.port == victim_port)
    store = build_store(make_settings(redis_url=group.url, redis_health_interval=0.05))
    assert isinstance(store, ClusterFailoverStore)
    await store.start()
    errors: list[BaseException] = []
    written: dict[str, str] = {}
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            for port_keys in keys.values():
                key = port_keys[(worker + i) % len(port_keys)]
                value = f"{worker}:{i}"
                try:
                    await store.set(key, value, 600_000)
                    written[key] = value
                except BaseException as exc:
                    errors.append(exc)
            i += 1
            await asyncio.sleep(0.002)

    try:
        assert len(store.stores) == 3
        victim_store = store.store_for(keys[victim_port][0])
        healthy = [store.store_for(keys[p][0]) for p in keys if p != victim_port]
        tasks = [asyncio.create_task(load(w)) for w in range(4)]
        await asyncio.sleep(0.3)
        victim.kill()
        killed_at = time.monotonic()
        deadline = killed_at + 20
        while victim_store.stats.switches_to_memory == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert victim_store.mode is Mode.MEMORY, "the dead master's range never left Redis"
        assert all(s.mode is Mode.REDIS for s in healthy)
        # What /health shows: degraded overall, and which range is and why.
        assert store.mode is Mode.MEMORY and store.stats.condition in ("unreachable", "timeout")
        modes = {n["slots"]: n["mode"] for n in store.stats.nodes()}
        assert sorted(modes.values()) == ["memory", "redis", "redis"], modes
        while victim_store.mode is Mode.MEMORY and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        window = time.monotonic() - killed_at
        assert victim_store.mode is Mode.REDIS, "the promoted replica was never followed"
        await asyncio.sleep(0.5)  # load on the new master, watching for a flap
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        await store.close()

    assert not errors, errors[:3]
    assert store.stats.switches_to_memory == store.stats.switches_to_redis == 1
    assert victim_store.stats.switches_to_memory == 1
    assert victim_store.stats.switches_to_redis == 1  # no flap
    assert victim_store.stats.fallback_calls > 0 and victim_store.stats.written_back > 0
    for each in healthy:
        assert each.stats.switches_to_memory == 0 and each.stats.fallback_calls == 0
    # Every last write is in Redis: the healthy masters' because they never left it, the
    # dead master's because the journal was written back to its promoted replica.
    direct = redis.RedisCluster(
        host="127.0.0.1", port=next(n.port for n in group.nodes if n is not victim)
    )
    try:
        for key, value in written.items():
            assert direct.get(key) == value.encode(), key
    finally:
        direct.close()
    print(f"dead master's range on memory for {window:.2f} s")

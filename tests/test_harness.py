"""The harness itself: the servers are real, clustered, and can be hurt and healed."""

from __future__ import annotations

import asyncio

import nats
import redis.asyncio as aioredis

from marketpipe.infra.local import EtcdServer, NatsCluster, RedisServer


async def _roundtrip(pub_url: str, sub_url: str, subject: str) -> bytes:
    sub_nc = await nats.connect(sub_url)
    pub_nc = await nats.connect(pub_url)
    try:
        sub = await sub_nc.subscribe(subject)
        await sub_nc.flush()
        # routes propagate interest asynchronously; publish until it arrives
        for _ in range(50):
            await pub_nc.publish(subject, b"hello")
            await pub_nc.flush()
            try:
                msg = await sub.next_msg(timeout=0.1)
                return bytes(msg.data)
            except nats.errors.TimeoutError:
                continue
        raise AssertionError("message never crossed the cluster")
    finally:
        await pub_nc.close()
        await sub_nc.close()


async def test_message_published_on_one_node_arrives_through_another(
    nats_cluster: NatsCluster,
) -> None:
    assert len(nats_cluster.urls) == 3
    assert await _roundtrip(nats_cluster.urls[0], nats_cluster.urls[2], "harness.cross") == b"hello"


async def test_killing_one_node_leaves_the_cluster_serving(fresh_nats_cluster: NatsCluster) -> None:
    urls = fresh_nats_cluster.urls
    fresh_nats_cluster.nodes[0].kill()
    assert await _roundtrip(urls[1], urls[2], "harness.after-kill") == b"hello"
    # a client that was given all three addresses still connects
    nc = await nats.connect(servers=urls, connect_timeout=1, max_reconnect_attempts=2)
    assert (
        nc.connected_url is not None and nc.connected_url.port != fresh_nats_cluster.client_ports[0]
    )
    await nc.close()
    fresh_nats_cluster.nodes[0].start()
    await asyncio.to_thread(lambda: fresh_nats_cluster.routed() or None)


async def test_max_payload_is_raised_for_market_snapshots(nats_cluster: NatsCluster) -> None:
    nc = await nats.connect(nats_cluster.urls[0])
    assert nc.max_payload >= 4 * 1024 * 1024
    await nc.close()


async def test_redis_can_be_killed_and_restarted(fresh_redis: RedisServer) -> None:
    client = aioredis.from_url(fresh_redis.url)
    await client.set("k", "v")
    assert fresh_redis.process is not None
    fresh_redis.process.kill()
    fresh_redis.process.start()
    await client.aclose()
    client = aioredis.from_url(fresh_redis.url)
    assert await client.ping()
    assert await client.get("k") is None  # a cache: nothing survives a restart
    await client.aclose()


async def test_redis_pause_and_resume(fresh_redis: RedisServer) -> None:
    client = aioredis.from_url(fresh_redis.url, socket_timeout=0.3)
    assert fresh_redis.process is not None
    fresh_redis.process.pause()
    try:
        await client.ping()
        raise AssertionError("a paused redis answered")
    except (TimeoutError, aioredis.ConnectionError, aioredis.TimeoutError):
        pass
    fresh_redis.process.resume()
    client2 = aioredis.from_url(fresh_redis.url)
    assert await client2.ping()
    await client.aclose()
    await client2.aclose()


def test_etcd_is_healthy_and_restartable(etcd_server: EtcdServer) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{etcd_server.url}/health", timeout=2) as resp:
        assert resp.status == 200

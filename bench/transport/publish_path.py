"""The hot publish path: raw nats-py vs NatsClient vs the leader-gated ServiceContext, and the
Redis cache's write and flush rates. One command, everything measured in the same run::

    .venv/bin/python -m bench.transport.publish_path [--messages 200000] [--size 1000]

Starts its own 1-node NATS and a redis-server on free ports. Target: the services' ~20 k msgs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import nats
import uvloop

from marketpipe.config import Settings
from marketpipe.infra.local import NatsCluster, RedisServer
from marketpipe.logs import configure_logging
from marketpipe.services.runtime import ServiceContext
from marketpipe.transport.redis_cache import RedisCache, orderbook_key

SYMBOLS = [f"S{i}USDT" for i in range(200)]


async def _rate(messages: int, publish_one) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for i in range(messages):
        await publish_one(i)
    return messages / (time.perf_counter() - started)


async def bench(nats_url: str, redis_url: str, messages: int, size: int) -> None:
    payload = b"x" * size
    subjects = [f"orderbook.{s}" for s in SYMBOLS]
    n = len(subjects)

    raw = await nats.connect(nats_url)

    async def raw_publish(i: int) -> None:
        await raw.publish(subjects[i % n], payload)

    baseline = await _rate(messages, raw_publish)
    await raw.flush()
    await raw.close()

    settings = Settings(nats_urls=[nats_url], redis_url=redis_url, etcd_endpoints=[])
    ctx = ServiceContext("bench", settings)
    await ctx.nats.connect()
    assert ctx.cache is not None
    await ctx.cache.start()

    async def client_publish(i: int) -> None:
        await ctx.nats.publish(subjects[i % n], payload)

    async def gated_publish(i: int) -> None:
        if ctx.publish(subjects[i % n], payload):
            ctx.cache_value(orderbook_key(SYMBOLS[i % n]), payload)

    client = await _rate(messages, client_publish)
    await ctx.leadership.start(ctx.tasks)  # static leader: the gate opens
    leader = await _rate(messages, gated_publish)
    await ctx.leadership.resign()
    follower = await _rate(messages, gated_publish)
    await ctx.nats.flush()

    rows = [
        ("nats-py publish (baseline)", baseline),
        ("NatsClient.publish", client),
        ("ctx.publish + cache_value, leader", leader),
        ("ctx.publish, follower (dropped)", follower),
    ]
    print(f"{messages} messages of {size} B over {n} subjects")
    for label, rate in rows:
        print(f"  {label:<36} {rate:>12,.0f} msgs/s  {rate / baseline:6.2f}x baseline")

    cache = RedisCache(redis_url, prefix="bench:", writer="bench")
    await cache.start()
    writes = messages
    started = time.perf_counter()
    for i in range(writes):
        cache.set_value(orderbook_key(SYMBOLS[i % n]), payload)
        cache.push_recent(f"trades:{SYMBOLS[i % n]}", payload)
    in_memory = 2 * writes / (time.perf_counter() - started)
    started = time.perf_counter()
    await cache.flush()
    flushed = time.perf_counter() - started
    keys = 2 * len(SYMBOLS)
    print(f"  RedisCache writes (in memory)        {in_memory:>12,.0f} writes/s")
    print(f"  RedisCache flush of {keys} dirty keys   {flushed * 1000:>10.1f} ms")
    await cache.close()
    await ctx.cache.close()
    await ctx.nats.drain()
    await ctx.http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1000)
    args = parser.parse_args()
    configure_logging("WARNING")
    cluster = NatsCluster(size=1).start()
    redis = RedisServer().start()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(bench(cluster.urls[0], redis.url, args.messages, args.size))
    finally:
        cluster.stop()
        redis.stop()


if __name__ == "__main__":
    main()

"""Fencing on the Redis side (DESIGN §8): a write carries its term's epoch, Redis refuses an older
one per key, and a term that ended writes nothing more, not even from a refill."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from marketpipe.ha.term import LeaseClock, Term
from marketpipe.infra.local import RedisServer
from marketpipe.infra.proxy import FaultProxy
from marketpipe.transport.redis_cache import MARKETS_HASH, RedisCache, orderbook_key, trades_key
from tests.eventually import eventually


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


def _refused() -> float:
    return (
        REGISTRY.get_sample_value("marketpipe_redis_fenced_total", {"reason": "older_epoch"}) or 0
    )


async def test_an_older_epoch_never_overwrites_a_newer_one(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    old = RedisCache(redis_server.url, prefix="fz1:", writer="old")
    new = RedisCache(redis_server.url, prefix="fz1:", writer="new")
    old_term, new_term = Term(3, LeaseClock()), Term(4, LeaseClock())
    await new.start()
    new.set_value(orderbook_key("BTCUSDT"), b"new", new_term)
    new.push_recent(trades_key("BTCUSDT"), b'{"t":2}', term=new_term)
    new.hset(MARKETS_HASH, "BTCUSDT", b"new", new_term)
    await eventually(lambda: raw.hget("fz1:markets", "BTCUSDT"))
    before = _refused()

    await old.start()
    old.set_value(orderbook_key("BTCUSDT"), b"old", old_term)
    old.set_value(orderbook_key("ETHUSDT"), b"old-but-first", old_term)  # nobody newer wrote it
    old.push_recent(trades_key("BTCUSDT"), b'{"t":1}', term=old_term)
    old.hset(MARKETS_HASH, "BTCUSDT", b"old", old_term)
    await eventually(lambda: _refused() >= before + 3)
    assert await raw.get("fz1:orderbook:BTCUSDT") == b"new"
    assert await raw.get("fz1:orderbook:ETHUSDT") == b"old-but-first"
    assert await raw.lrange("fz1:trades:BTCUSDT", 0, -1) == [b'{"t":2}']
    assert await raw.hget("fz1:markets", "BTCUSDT") == b"new"
    await old.close()
    await new.close()


async def test_a_term_that_ended_writes_nothing_more_not_even_in_a_refill(
    fresh_redis: RedisServer,
) -> None:
    raw = aioredis.from_url(fresh_redis.url)
    lease = LeaseClock()
    term = Term(9, lease)
    cache = RedisCache(fresh_redis.url, prefix="fz2:", writer="w", flush_interval=0.02)
    await cache.start()
    cache.set_value(orderbook_key("BTCUSDT"), b"v1", term)
    cache.set_value(orderbook_key("UNFENCED"), b"u1")
    await eventually(lambda: raw.get("fz2:orderbook:BTCUSDT"))
    term.end("lease_lost")
    cache.set_value(orderbook_key("BTCUSDT"), b"v2", term)  # too late: the term is over
    assert cache.discard(term) == 1
    later = Term(10, lease)
    lease.deadline = 0.0  # and a term whose lease ran out is as good as ended
    cache.set_value(orderbook_key("ETHUSDT"), b"e1", later)
    await raw.flushall()  # Redis comes back empty: the refill rewrites only what may be written
    await eventually(lambda: raw.get("fz2:orderbook:UNFENCED"))
    assert await raw.get("fz2:orderbook:BTCUSDT") is None
    assert await raw.get("fz2:orderbook:ETHUSDT") is None
    await cache.close()
    await raw.aclose()


async def test_a_partitioned_writer_cannot_overwrite_its_successor_after_the_heal(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    proxy = FaultProxy(target_port=redis_server.port).start()
    try:
        old = RedisCache(proxy.url("redis") + "/0", prefix="fz3:", writer="old", timeout=30)
        await old.start()
        old_term = Term(20, LeaseClock())
        old.set_value(orderbook_key("BTCUSDT"), b"old-1", old_term)
        await eventually(lambda: raw.get("fz3:orderbook:BTCUSDT"))
        proxy.stall()
        old.set_value(orderbook_key("BTCUSDT"), b"old-2", old_term)  # flushed into the stall
        await eventually(lambda: int(proxy.status()["held_bytes"]) > 0)

        new = RedisCache(redis_server.url, prefix="fz3:", writer="new")
        await new.start()
        new.set_value(orderbook_key("BTCUSDT"), b"new-1", Term(21, LeaseClock()))
        await eventually(lambda: _value_is(raw, b"new-1"))
        proxy.heal()
        await eventually(lambda: int(proxy.status()["held_bytes"]) == 0)
        await eventually(lambda: old.healthy)
        assert await raw.get("fz3:orderbook:BTCUSDT") == b"new-1"
        await new.close()
        await old.close()
    finally:
        proxy.stop()


async def _value_is(raw: aioredis.Redis, value: bytes) -> bool:
    return bool(await raw.get("fz3:orderbook:BTCUSDT") == value)

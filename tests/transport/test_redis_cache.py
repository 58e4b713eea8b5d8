"""RedisCache against a real redis-server: writes never wait for Redis, and Redis is refilled."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from marketpipe.infra.local import RedisServer
from marketpipe.transport.redis_cache import (
    MARKETS_HASH,
    RedisCache,
    orderbook_key,
    trades_key,
)
from tests.eventually import eventually


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_values_lists_and_hashes_land_under_the_prefix(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    cache = RedisCache(redis_server.url, prefix="t1:", writer="t1")
    await cache.start()
    cache.set_value(orderbook_key("BTCUSDT"), b"old")
    cache.set_value(orderbook_key("BTCUSDT"), b"new")
    for i in range(25):
        cache.push_recent(trades_key("BTCUSDT"), str(i).encode())
    cache.hset(MARKETS_HASH, "BTCUSDT", b"b")
    cache.hset_many(MARKETS_HASH, {"ETHUSDT": b"e", "BTCUSDT": b"b2"})

    async def landed() -> bool:
        return await raw.llen("t1:trades:BTCUSDT") == 10 and await raw.hlen("t1:markets") == 2

    await eventually(landed, within=30)
    assert await raw.get("t1:orderbook:BTCUSDT") == b"new"
    newest_first = [str(i).encode() for i in range(24, 14, -1)]
    assert await raw.lrange("t1:trades:BTCUSDT", 0, -1) == newest_first
    assert await cache.get_recent(trades_key("BTCUSDT")) == newest_first
    assert await cache.get_value(orderbook_key("BTCUSDT")) == b"new"
    assert await cache.hgetall(MARKETS_HASH) == {"BTCUSDT": b"b2", "ETHUSDT": b"e"}
    await cache.close()


async def test_redis_down_never_blocks_writers_and_pending_values_land_on_return(
    fresh_redis: RedisServer,
) -> None:
    assert fresh_redis.process is not None
    cache = RedisCache(fresh_redis.url, writer="t2", max_backoff=0.3)
    await cache.start()
    cache.set_value("ticker:BTCUSDT", b"before")
    await eventually(lambda: cache.healthy, within=30)
    errors_before = REGISTRY.get_sample_value("marketpipe_redis_errors_total") or 0

    fresh_redis.process.kill()
    started = time.perf_counter()
    for i in range(20_000):
        cache.set_value(f"ticker:S{i % 500}", str(i).encode())
        cache.push_recent("trades:BTCUSDT", str(i).encode())
    assert time.perf_counter() - started < 2.0  # in-memory only: no network wait per write
    await eventually(lambda: not cache.healthy, within=30)
    assert (REGISTRY.get_sample_value("marketpipe_redis_errors_total") or 0) > errors_before
    # reads fail soft too
    assert await cache.get_value("ticker:BTCUSDT") is None

    fresh_redis.process.start()  # same port, empty: it lost everything
    raw = aioredis.from_url(fresh_redis.url)
    try:
        await eventually(lambda: raw.get("marketpipe:ticker:S499"), within=30)
        assert await raw.get("marketpipe:ticker:S499") == b"19999"
        assert await raw.get("marketpipe:ticker:BTCUSDT") == b"before"  # refilled
        assert await raw.lrange("marketpipe:trades:BTCUSDT", 0, 1) == [b"19999", b"19998"]
        assert await raw.llen("marketpipe:trades:BTCUSDT") == 10
    finally:
        await raw.aclose()
        await cache.close()


async def test_data_lost_without_an_error_is_refilled(fresh_redis: RedisServer) -> None:
    cache = RedisCache(fresh_redis.url, writer="t3")
    await cache.start()
    cache.set_value(orderbook_key("ETHUSDT"), b"book")
    cache.hset(MARKETS_HASH, "ETHUSDT", b"tick")
    raw = aioredis.from_url(fresh_redis.url)
    try:
        await eventually(lambda: raw.exists("marketpipe:writers:t3"), within=30)  # settled
        await raw.flushall()  # as a restart between two flushes would leave it
        cache.push_recent(trades_key("ETHUSDT"), b"t1")  # the next write notices and refills
        await eventually(lambda: raw.exists("marketpipe:writers:t3"), within=30)
        assert await raw.hgetall("marketpipe:markets") == {b"ETHUSDT": b"tick"}
        assert await raw.lrange("marketpipe:trades:ETHUSDT", 0, -1) == [b"t1"]
    finally:
        await raw.aclose()
        await cache.close()


async def test_big_flushes_and_refills_go_out_in_several_pipelines_and_all_land(
    fresh_redis: RedisServer,
) -> None:
    books = {f"S{i}": bytes([65 + i % 26]) * 16_000 for i in range(300)}  # ~5 pipelines
    cache = RedisCache(fresh_redis.url, writer="t8")
    await cache.start()
    raw = aioredis.from_url(fresh_redis.url)
    try:
        await eventually(lambda: cache.healthy, within=30)
        for symbol, book in books.items():
            cache.set_value(orderbook_key(symbol), book)
        cache.hset_many(MARKETS_HASH, {s: b[:100] for s, b in books.items()})

        async def all_there() -> bool:
            values = await raw.mget([f"marketpipe:orderbook:{s}" for s in books])
            return values == list(books.values()) and await raw.hlen("marketpipe:markets") == 300

        await eventually(all_there, within=30)
        await raw.flushall()
        cache.set_value(orderbook_key("S0"), b"newer")  # notices the loss and refills
        books["S0"] = b"newer"
        await eventually(all_there, within=30)
        assert await raw.exists("marketpipe:writers:t8")
    finally:
        await raw.aclose()
        await cache.close()


async def test_pending_writes_are_flushed_on_close(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    cache = RedisCache(redis_server.url, prefix="t4:", writer="t4", flush_interval=30)
    await cache.start()
    await eventually(lambda: cache.healthy, within=30)
    cache.set_value("ticker:BTCUSDT", b"last")
    await cache.close()
    assert await raw.get("t4:ticker:BTCUSDT") == b"last"


async def test_the_mirror_is_bounded_by_key_count(redis_server: RedisServer) -> None:
    cache = RedisCache(redis_server.url, prefix="t5:", writer="t5", max_keys=3)
    for i in range(5):
        cache.set_value(f"k{i}", b"v")
    cache.set_value("k0", b"updated")  # known keys still update
    assert cache.pending_keys == 3
    await cache.start()
    await eventually(lambda: cache.get_value("k0"), within=30)
    assert await cache.get_value("k0") == b"updated"
    assert await cache.get_value("k4") is None
    await cache.close()


async def test_a_pair_removed_from_a_hash_is_gone_also_after_a_refill(
    fresh_redis: RedisServer,
) -> None:
    cache = RedisCache(fresh_redis.url, writer="t6", max_backoff=0.3)
    await cache.start()
    cache.hset_many(MARKETS_HASH, {"AUSDT": b"a", "BUSDT": b"b"})
    raw = aioredis.from_url(fresh_redis.url)
    try:
        await eventually(lambda: raw.hexists("marketpipe:markets", "BUSDT"), within=30)
        cache.hdel(MARKETS_HASH, ["BUSDT"])
        await eventually(lambda: cache.pending_keys == 0, within=30)
        assert await cache.hgetall(MARKETS_HASH) == {"AUSDT": b"a"}
        await raw.flushall()
        cache.hset(MARKETS_HASH, "CUSDT", b"c")
        await eventually(lambda: raw.hexists("marketpipe:markets", "CUSDT"), within=30)
        assert await cache.hgetall(MARKETS_HASH) == {"AUSDT": b"a", "CUSDT": b"c"}
    finally:
        await raw.aclose()
        await cache.close()


async def test_a_reader_only_cache_writes_nothing(fresh_redis: RedisServer) -> None:
    cache = RedisCache(fresh_redis.url, writer="gateway")
    await cache.start()
    await eventually(lambda: cache.healthy, within=30)
    raw = aioredis.from_url(fresh_redis.url)
    assert await raw.dbsize() == 0
    await raw.aclose()
    await cache.close()


async def test_a_catch_up_pushes_only_what_the_list_lacks_before_later_pushes(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    trade = lambda t: b'{"s":"BTCUSDT","t":%d}' % t  # noqa: E731
    cache = RedisCache(redis_server.url, prefix="t9:", writer="t9", flush_interval=30)
    await cache.start()
    cache.set_value(orderbook_key("BTCUSDT"), b"b")
    await cache.flush()  # the first write plants the writer's sentinel
    await raw.lpush("t9:trades:BTCUSDT", *[trade(t) for t in range(1, 6)])  # the previous leader
    await raw.lpush("t9:trades:ETHUSDT", b"not json")
    cache.catch_up_recent(trades_key("BTCUSDT"), [trade(t) for t in range(3, 9)], "t")
    cache.push_recent(trades_key("BTCUSDT"), trade(9))
    cache.catch_up_recent(trades_key("ETHUSDT"), [trade(1)], "t")
    cache.catch_up_recent(trades_key("XRPUSDT"), [trade(1), trade(2)], "t")
    await cache.flush()
    assert await raw.lrange("t9:trades:BTCUSDT", 0, -1) == [trade(t) for t in range(9, 0, -1)]
    assert await raw.lrange("t9:trades:ETHUSDT", 0, -1) == [trade(1), b"not json"]
    assert await raw.lrange("t9:trades:XRPUSDT", 0, -1) == [trade(2), trade(1)]
    await cache.close()

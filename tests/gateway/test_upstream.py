"""The gateway's NATS subscriptions follow its clients' interest, across races (issue 12, #3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import nats
import orjson
import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as Nats

from tests.eventually import eventually
from tests.gateway.client import book, metric_value, metrics, publish, receive, request
from tests.gateway.conftest import GatewayFactory, RunningGateway

pytestmark = pytest.mark.timeout(120)

ATTEMPTS = 12
HELD = "orderbook@SOLUSDT"  # the topic whose last other holder leaves
FRESH = "trades@SOLUSDT"  # a topic nobody holds yet: subscribing to it waits for NATS


@pytest.fixture(scope="module")
def gateway(start_gateway: GatewayFactory) -> RunningGateway:
    return start_gateway()


@pytest.fixture
async def publisher(gateway: RunningGateway) -> AsyncIterator[Nats]:
    nc = await nats.connect(gateway.nats_url)
    yield nc
    await nc.close()


async def subscriptions(http: aiohttp.ClientSession, gateway: RunningGateway) -> float:
    return metric_value(await metrics(http, gateway.http_url), "marketpipe_gateway_subscriptions")


async def test_joining_while_the_last_other_holder_leaves_keeps_the_topic_live(
    gateway: RunningGateway, publisher: Nats
) -> None:
    """A subscribes to [HELD, FRESH] while B, the only holder of HELD, leaves: A must get
    HELD's live books, not one cached book and then silence."""
    cache = aioredis.from_url(gateway.redis_url)
    key = f"{gateway.redis_prefix}orderbook:SOLUSDT"
    update_id = 100
    try:
        async with aiohttp.ClientSession() as http:
            for attempt in range(ATTEMPTS):
                update_id += 1
                await cache.set(key, orjson.dumps(book(update_id, symbol="SOLUSDT")))
                leaving = await http.ws_connect(gateway.ws_url)
                assert (await request(leaving, "subscribe", HELD))["result"] == "subscribed"
                assert (await receive(leaving))["data"]["lastUpdateId"] == update_id
                # the service wrote a newer book to the cache meanwhile
                update_id += 1
                await cache.set(key, orjson.dumps(book(update_id, symbol="SOLUSDT")))
                joining = await http.ws_connect(gateway.ws_url)
                # both frames leave at once: the gateway reads the close while it waits for
                # NATS to confirm the joining client's new subscription
                await joining.send_bytes(
                    orjson.dumps({"action": "subscribe", "topics": [HELD, FRESH], "id": attempt})
                )
                closing = asyncio.create_task(leaving.close())
                assert (await receive(joining))["result"] == "subscribed"
                first = await receive(joining)  # the newest book at once, from memory or cache
                assert first["topic"] == HELD and first["data"]["lastUpdateId"] >= update_id - 1
                await closing
                update_id += 1
                await publish(publisher, "orderbook.SOLUSDT", book(update_id, symbol="SOLUSDT"))
                live = await receive(joining, within=5.0)
                assert live == {"topic": HELD, "data": book(update_id, symbol="SOLUSDT")}, (
                    f"attempt {attempt}: no live book after the other holder left"
                )
                await joining.close()
                await wait_until_no_subscriptions(http, gateway)
    finally:
        await cache.aclose()


async def wait_until_no_subscriptions(http: aiohttp.ClientSession, gateway: RunningGateway) -> None:
    async def none_left() -> bool:
        return await subscriptions(http, gateway) == 0

    await eventually(none_left, what="no NATS subscription left once every client left")


async def test_a_topic_held_again_sends_the_cached_book_the_last_holder_had(
    gateway: RunningGateway,
) -> None:
    """The ordering guard outlives a topic's subscribers, but the book it last let through
    is not older than itself: a new client gets it at once, not only the next change."""
    cache = aioredis.from_url(gateway.redis_url)
    try:
        cached = book(500, symbol="BNBUSDT")
        await cache.set(f"{gateway.redis_prefix}orderbook:BNBUSDT", orjson.dumps(cached))
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.ws_connect(gateway.ws_url) as ws:
                    assert (await request(ws, "subscribe", "orderbook@BNBUSDT"))["result"]
                    assert await receive(ws) == {"topic": "orderbook@BNBUSDT", "data": cached}
                await wait_until_no_subscriptions(http, gateway)
    finally:
        await cache.aclose()

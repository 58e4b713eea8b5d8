"""The gateway over real sockets, fed through real NATS and Redis (DESIGN §4).

Until the producing services exist these tests publish contract-shaped messages (DESIGN §2)
and write contract-shaped cache values (DESIGN §3) themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import nats
import orjson
import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as Nats

from tests.eventually import eventually
from tests.gateway.client import book, nothing_arrives, publish, receive, request, ticker, trade
from tests.gateway.conftest import GatewayFactory, RunningGateway

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def gateway(start_gateway: GatewayFactory) -> RunningGateway:
    return start_gateway(
        gateway_max_topics="8",
        gateway_max_message_bytes="512",
        gateway_max_messages_per_second="20",
    )


@pytest.fixture
async def publisher(gateway: RunningGateway) -> AsyncIterator[Nats]:
    nc = await nats.connect(gateway.nats_url)
    yield nc
    await nc.close()


@pytest.fixture
async def cache(gateway: RunningGateway) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(gateway.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_subscribe_receive_unsubscribe(
    gateway: RunningGateway, publisher: Nats, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(gateway.ws_url) as ws:
        reply = await request(ws, "subscribe", "trades@ETHUSDT", 7)
        assert reply == {"result": "subscribed", "topics": ["trades@ETHUSDT"], "id": 7}
        await publish(publisher, "trades.ETHUSDT", trade(1, "ETHUSDT"))
        assert await receive(ws) == {"topic": "trades@ETHUSDT", "data": trade(1, "ETHUSDT")}
        reply = await request(ws, "unsubscribe", ["trades@ETHUSDT"], "x")
        assert reply == {"result": "unsubscribed", "topics": ["trades@ETHUSDT"], "id": "x"}
        await publish(publisher, "trades.ETHUSDT", trade(2, "ETHUSDT"))
        assert await nothing_arrives(ws)


async def test_the_legacy_root_path_speaks_the_same_protocol(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(gateway.http_url + "/") as ws:
        reply = await request(ws, "subscribe", "tickers@BNBUSDT")
        assert reply["result"] == "subscribed"
    for path, kind in [("/", "text/html"), ("/static/app.js", "javascript")]:
        async with http.get(gateway.http_url + path) as page:
            assert page.status == 200 and kind in page.content_type


async def test_every_channel(
    gateway: RunningGateway,
    publisher: Nats,
    cache: aioredis.Redis,
    http: aiohttp.ClientSession,
) -> None:
    prefix = gateway.redis_prefix
    for t in (1, 2, 3):  # LPUSH: newest first
        await cache.lpush(f"{prefix}trades:SOLUSDT", orjson.dumps(trade(t, "SOLUSDT")))
    await cache.hset(f"{prefix}markets", "SOLUSDT", orjson.dumps(ticker(5, "SOLUSDT")))
    async with http.ws_connect(gateway.ws_url) as ws:
        reply = await request(ws, "subscribe", "all@SOLUSDT,markets@DATA,markets@SNAPSHOT")
        assert reply["topics"] == ["all@SOLUSDT", "markets@DATA", "markets@SNAPSHOT"]
        first = [await receive(ws), await receive(ws)]
        assert {"topic": "markets@SNAPSHOT", "data": {"SOLUSDT": ticker(5, "SOLUSDT")}} in first
        recent = {
            "topic": "snapshot_trades@SOLUSDT",
            "data": [trade(t, "SOLUSDT") for t in (3, 2, 1)],
        }
        assert recent in first
        live = {
            "orderbook.SOLUSDT": book(10, symbol="SOLUSDT"),
            "trades.SOLUSDT": trade(4, "SOLUSDT"),
            "tickers.SOLUSDT": ticker(6, "SOLUSDT"),
            "markets.DATA": {"SOLUSDT": ticker(6, "SOLUSDT")},
            "markets.SNAPSHOT": {"SOLUSDT": ticker(6, "SOLUSDT")},
        }
        for subject, message in live.items():
            await publish(publisher, subject, message)
            topic = subject.replace(".", "@", 1)
            assert await receive(ws) == {"topic": topic, "data": message}


async def test_latest_value_on_subscribe_then_live_never_an_older_book(
    gateway: RunningGateway,
    publisher: Nats,
    cache: aioredis.Redis,
    http: aiohttp.ClientSession,
) -> None:
    prefix = gateway.redis_prefix
    await cache.set(f"{prefix}orderbook:XRPUSDT", orjson.dumps(book(100, 50, symbol="XRPUSDT")))
    await cache.set(f"{prefix}ticker:XRPUSDT", orjson.dumps(ticker(1000, "XRPUSDT")))
    async with http.ws_connect(gateway.ws_url) as ws:
        await request(ws, "subscribe", "orderbook@XRPUSDT,tickers@XRPUSDT")
        got = {m["topic"]: m["data"] for m in [await receive(ws), await receive(ws)]}
        assert got == {
            "orderbook@XRPUSDT": book(100, 50, symbol="XRPUSDT"),
            "tickers@XRPUSDT": ticker(1000, "XRPUSDT"),
        }
        # messages that were in flight when the cache was read are older: never shown
        await publish(publisher, "orderbook.XRPUSDT", book(99, 49, symbol="XRPUSDT"))
        await publish(publisher, "orderbook.XRPUSDT", book(100, 50, symbol="XRPUSDT"))
        await publish(publisher, "tickers.XRPUSDT", ticker(999, "XRPUSDT"))
        await publish(publisher, "orderbook.XRPUSDT", book(101, 51, symbol="XRPUSDT"))
        assert await receive(ws) == {
            "topic": "orderbook@XRPUSDT",
            "data": book(101, 51, symbol="XRPUSDT"),
        }
        # a second client joining later gets the newest book from memory at once
        async with http.ws_connect(gateway.ws_url) as late:
            await request(late, "subscribe", "orderbook@XRPUSDT")
            assert (await receive(late))["data"]["lastUpdateId"] == 101


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"{not json", "malformed JSON"),
        (orjson.dumps({"action": "subscribe", "topics": "candles@BTCUSDT"}), "unknown channel"),
        (orjson.dumps({"action": "subscribe", "topics": "markets@HOURLY"}), "unknown markets view"),
        (
            orjson.dumps({"action": "subscribe", "topics": ",".join(["trades@BTCUSDT"] * 9)}),
            "too many topics",
        ),
        (
            orjson.dumps({"action": "subscribe", "topics": "trades@BTCUSDT", "pad": "x" * 600}),
            "exceeds 512",
        ),
    ],
)
async def test_bad_input_gets_an_error_and_the_connection_stays(
    gateway: RunningGateway, http: aiohttp.ClientSession, message: bytes, expected: str
) -> None:
    async with http.ws_connect(gateway.ws_url) as ws:
        await ws.send_bytes(message)
        error = await receive(ws)
        assert error["error"]["code"] == 400 and expected in error["error"]["message"], error
        reply = await request(ws, "subscribe", "trades@BTCUSDT", 2)
        assert reply["result"] == "subscribed"


async def test_unknown_symbol_is_refused_against_the_assets_list(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(gateway.ws_url) as ws:
        replies: list[dict[str, Any]] = []

        async def refused() -> dict[str, Any] | None:  # once the first assets poll has run
            replies.append(await request(ws, "subscribe", "trades@DOGEUSDT", 4))
            return replies[-1] if "error" in replies[-1] else None

        reply = await eventually(refused, what=lambda: f"still {replies[-1]}")
        assert reply == {"error": {"code": 400, "message": "unknown symbol 'DOGEUSDT'"}, "id": 4}
        assert (await request(ws, "subscribe", "trades@BNBUSDT"))["result"] == "subscribed"


async def test_topic_limit_counts_the_whole_connection(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(gateway.ws_url) as ws:
        assert (await request(ws, "subscribe", "all@BTCUSDT,all@ETHUSDT"))["result"]
        for _ in range(2):  # the two snapshot_trades answers
            assert (await receive(ws))["topic"].startswith("snapshot_trades@")
        error = await request(ws, "subscribe", "all@BNBUSDT", 3)
        assert error["id"] == 3 and "too many topics" in error["error"]["message"]


async def test_a_flooding_client_is_closed_with_1008(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(gateway.ws_url) as ws:
        for _ in range(200):
            if ws.closed:
                break
            await ws.send_bytes(b'{"action":"subscribe","topics":"trades@BTCUSDT"}')
        while (msg := await ws.receive(timeout=3)).type is aiohttp.WSMsgType.TEXT:
            pass
        assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1008


async def test_metrics_count_clients_and_bad_input(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(gateway.ws_url) as ws:
        await ws.send_bytes(b"[")
        await receive(ws)
        async with http.get(gateway.http_url + "/metrics") as resp:
            text = await resp.text()
    assert "marketpipe_gateway_connections 1.0" in text
    assert 'marketpipe_bad_input_total{kind="malformed_json",source="gateway"}' in text


async def test_shutdown_says_going_away(
    start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    doomed = start_gateway()
    async with http.ws_connect(doomed.ws_url) as ws:
        await request(ws, "subscribe", "trades@BTCUSDT")
        assert doomed.process.proc is not None
        doomed.process.proc.terminate()
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1001
    assert await asyncio.to_thread(doomed.process.proc.wait, 10) == 0


async def test_the_connection_limit_refuses_with_503_until_a_place_frees(
    start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    small = start_gateway(gateway_max_connections="2")
    first = await http.ws_connect(small.ws_url)
    async with http.ws_connect(small.ws_url):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(small.ws_url)
        assert refused.value.status == 503
        await first.close()

        async def admitted() -> aiohttp.ClientWebSocketResponse | None:
            try:
                return await http.ws_connect(small.ws_url)
            except aiohttp.WSServerHandshakeError:
                return None

        # the gateway forgets a closed client once its reader has ended
        again = await eventually(admitted, what="a place freed after a client left")
        assert (await request(again, "subscribe", "trades@BTCUSDT"))["result"] == "subscribed"
        await again.close()
    async with http.get(small.http_url + "/metrics") as resp:
        text = await resp.text()
    assert 'marketpipe_gateway_disconnects_total{reason="connection_limit"} 1.0' in text


async def test_a_client_without_topics_is_closed_when_idle_one_with_topics_is_not(
    start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    quick = start_gateway(gateway_idle_timeout_seconds="0.5")
    async with (
        http.ws_connect(quick.ws_url) as silent,
        http.ws_connect(quick.ws_url) as subscribed,
    ):
        assert (await request(subscribed, "subscribe", "trades@BTCUSDT"))["result"]
        msg = await silent.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and silent.close_code == 1000
        assert msg.extra == "idle timeout"
        assert await nothing_arrives(subscribed, within=1.0)  # twice the timeout, still open
        assert not subscribed.closed
        # it may still talk; once it drops its last topic, the idle clock runs for it too
        assert (await request(subscribed, "unsubscribe", "trades@BTCUSDT"))["result"]
        msg = await subscribed.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and subscribed.close_code == 1000


async def test_negotiated_compression_carries_the_same_messages(
    start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    compressing = start_gateway(gateway_compression="true")
    nc = await nats.connect(compressing.nats_url)
    try:
        async with (
            http.ws_connect(compressing.ws_url, compress=15) as deflated,
            http.ws_connect(compressing.ws_url, compress=0) as plain,
        ):
            assert deflated.compress == 15 and plain.compress == 0
            for ws in (deflated, plain):
                assert (await request(ws, "subscribe", "trades@SOLUSDT"))["result"]
            message = trade(7, symbol="SOLUSDT")
            await publish(nc, "trades.SOLUSDT", message)
            for ws in (deflated, plain):
                assert await receive(ws) == {"topic": "trades@SOLUSDT", "data": message}
    finally:
        await nc.close()


async def test_after_a_newer_epoch_an_old_leaders_messages_are_dropped(
    gateway: RunningGateway, publisher: Nats, http: aiohttp.ClientSession
) -> None:
    """DESIGN §8 at the consumer: an old leader healed after a partition still sends what it
    queued, books with higher update ids than the new leader's and trades."""
    async with http.ws_connect(gateway.ws_url) as ws:
        await request(ws, "subscribe", "orderbook@ETHUSDT,trades@ETHUSDT")
        sent = [
            ("orderbook.ETHUSDT", book(200, seq=9, epoch=7, symbol="ETHUSDT")),
            ("orderbook.ETHUSDT", book(201, seq=1, epoch=8, symbol="ETHUSDT")),  # new leader
            ("orderbook.ETHUSDT", book(260, seq=10, epoch=7, symbol="ETHUSDT")),  # old, queued
            ("trades.ETHUSDT", trade(50, "ETHUSDT") | {"epoch": 8}),
            ("trades.ETHUSDT", trade(49, "ETHUSDT") | {"epoch": 7}),
            ("orderbook.ETHUSDT", book(202, seq=2, epoch=8, symbol="ETHUSDT")),
        ]
        for subject, message in sent:
            await publish(publisher, subject, message)
        got = [(m["topic"], m["data"].get("lastUpdateId", m["data"].get("t"))) for m in
               [await receive(ws) for _ in range(4)]]  # fmt: skip
        assert got == [
            ("orderbook@ETHUSDT", 200),
            ("orderbook@ETHUSDT", 201),
            ("trades@ETHUSDT", 50),
            ("orderbook@ETHUSDT", 202),
        ]
        assert await nothing_arrives(ws)

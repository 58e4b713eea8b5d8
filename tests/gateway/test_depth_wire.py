"""depth@ through a real gateway: a client that stops reading gets, once it reads again, one
fresh snapshot in place of the deltas it did not take, and its chain never breaks."""

from __future__ import annotations

import asyncio
import socket
import struct

import aiohttp
import nats
import orjson
import pytest

from marketpipe.book.delta import ViewPublisher
from marketpipe.client.book import BookKeeper, Updated
from tests.book.test_delta import Settings, live_book
from tests.eventually import eventually
from tests.gateway.conftest import GatewayFactory
from tests.gateway.test_slow_client import stuck_client

pytestmark = pytest.mark.timeout(120)

STEPS = 600  # each changes every level: ~15 KB deltas, enough to fill any socket buffer
LEVELS = 250


def views() -> list[tuple[bytes, bytes | None]]:
    publisher, out = ViewPublisher(), []
    for step in range(1, STEPS + 1):
        bids = {f"{100 - i / 100:.2f}": f"{step}.{i:04d}" for i in range(LEVELS)}
        asks = {f"{101 + i / 100:.2f}": f"{step}.{i:04d}" for i in range(LEVELS)}
        rendered = publisher.render(live_book(step, bids, asks), Settings(100.0, LEVELS), step, 1)
        assert rendered is not None
        publisher.published()
        out.append(rendered)
    return out


def read_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the gateway closed the connection"
            data += chunk
        return data

    first, second = exactly(2)
    assert first == 0x81, first  # a final text frame
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", exactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", exactly(8))
    return exactly(length)


async def test_a_backlogged_depth_client_gets_a_fresh_snapshot_never_a_broken_chain(
    start_gateway: GatewayFactory,
) -> None:
    gateway = start_gateway(
        gateway_max_pending_bytes=str(64 * 1024 * 1024), gateway_write_deadline_seconds="60"
    )
    subscribe = orjson.dumps({"action": "subscribe", "topics": "depth@BTCUSDT"})
    stuck = await asyncio.to_thread(stuck_client, gateway.port, subscribe)
    async with aiohttp.ClientSession() as http:

        async def subscribed() -> bool:  # the gateway has its NATS interest
            async with http.get(gateway.http_url + "/metrics") as resp:
                return "marketpipe_gateway_subscriptions 1.0" in await resp.text()

        await eventually(subscribed)
        nc = await nats.connect(gateway.nats_url)
        published = views()
        for step, (full, delta) in enumerate(published, start=1):
            await nc.publish("orderbook.BTCUSDT", full)
            if delta is not None:
                await nc.publish("delta.orderbook.BTCUSDT", delta)
            if step % 20 == 0:
                await nc.flush()
        await nc.flush()
        await nc.close()
        async with http.get(gateway.http_url + "/metrics") as resp:
            metrics = await resp.text()
    assert 'marketpipe_gateway_disconnects_total{reason="slow"}' not in metrics

    keeper, kinds = BookKeeper("BTCUSDT"), []
    stuck.settimeout(20)
    assert orjson.loads(await asyncio.to_thread(read_frame, stuck))["result"] == "subscribed"
    while keeper.book is None or keeper.book.seq < STEPS:
        frame = orjson.loads(await asyncio.to_thread(read_frame, stuck))
        kinds.append(frame["type"])
        take = keeper.on_view if frame["type"] == "snapshot" else keeper.on_delta
        assert all(isinstance(o, Updated) for o in take(frame["data"])), keeper.stats.resyncs
    stuck.close()
    last = orjson.loads(published[-1][0])
    assert [list(lv) for lv in keeper.book.bids] == last["bids"]
    assert [list(lv) for lv in keeper.book.asks] == last["asks"]
    assert kinds[0] == "snapshot" and kinds.count("snapshot") > 1, kinds[:20]
    assert kinds.count("delta") + kinds.count("snapshot") < STEPS  # deltas were replaced
    assert not keeper.stats.resyncs

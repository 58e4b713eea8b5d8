"""A client that reads nothing does not delay the others, and is cut (1013) and counted."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import aiohttp
import nats
import orjson
import pytest

from tests.gateway.conftest import GatewayFactory

pytestmark = pytest.mark.timeout(120)

READERS = 50
MESSAGES = 1500
PADDING = "x" * 500  # a contract extension field
# only the stuck client wants these: enough to fill any socket buffer (kernel max 4 MB)
BULK_MESSAGES, BULK_PADDING = 200, "y" * 60_000


def stuck_client(port: int, subscribe: bytes) -> socket.socket:
    """A raw WebSocket client with a tiny receive buffer that, once subscribed, never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(subscribe))
    assert len(subscribe) < 126
    sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(subscribe)) + mask + masked)
    return sock


async def test_a_client_that_reads_nothing_does_not_delay_fifty_others(
    start_gateway: GatewayFactory,
) -> None:
    gateway = start_gateway(gateway_max_backlog="400")
    subscribe = orjson.dumps({"action": "subscribe", "topics": "trades@BTCUSDT"})
    stuck = await asyncio.to_thread(
        stuck_client,
        gateway.port,
        orjson.dumps({"action": "subscribe", "topics": "trades@BTCUSDT,trades@ETHUSDT"}),
    )
    latencies: list[float] = []
    counts = [0] * READERS
    async with aiohttp.ClientSession() as http:
        readers = [await http.ws_connect(gateway.ws_url) for _ in range(READERS)]
        for ws in readers:
            await ws.send_bytes(subscribe)
            assert orjson.loads((await ws.receive(timeout=5)).data)["result"] == "subscribed"

        async def read(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            while counts[i] < MESSAGES:
                msg = await ws.receive(timeout=20)
                assert msg.type is aiohttp.WSMsgType.TEXT, (msg, ws.close_code)
                sent = orjson.loads(msg.data)["data"]["sent"]
                latencies.append(time.time() - sent)
                counts[i] += 1

        tasks = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(readers)]
        nc = await nats.connect(gateway.nats_url)
        for t in range(MESSAGES):
            trade = {"e": "trade", "s": "BTCUSDT", "t": t, "sent": time.time(), "pad": PADDING}
            await nc.publish("trades.BTCUSDT", orjson.dumps(trade))
            if t < BULK_MESSAGES:
                bulk = {"e": "trade", "s": "ETHUSDT", "t": t, "pad": BULK_PADDING}
                await nc.publish("trades.ETHUSDT", orjson.dumps(bulk))
            if t % 20 == 0:
                await nc.flush()
                await asyncio.sleep(0.01)
        await nc.flush()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        await nc.close()
        async with http.get(gateway.http_url + "/metrics") as resp:
            metrics = await resp.text()
        for ws in readers:
            await ws.close()
    stuck.close()
    assert counts == [MESSAGES] * READERS  # nobody else lost anything
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    print(
        f"\nreaders' latency with a stuck client: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )
    assert p99 < 2.0  # generous: 2 noisy cores, 51 clients and the publisher in one box
    assert 'marketpipe_gateway_disconnects_total{reason="slow"} 1.0' in metrics
    dropped = [
        line
        for line in metrics.splitlines()
        if line.startswith('marketpipe_gateway_dropped_messages_total{reason="slow_client"}')
    ]
    assert dropped and float(dropped[0].split()[-1]) > 0

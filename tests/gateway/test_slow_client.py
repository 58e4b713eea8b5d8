"""A client that reads nothing does not delay the others, and is cut (1013) and counted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from pathlib import Path

import aiohttp
import nats
import orjson
import pytest

from tests.eventually import eventually
from tests.gateway.client import metric_value, metrics, request, trade
from tests.gateway.conftest import GatewayFactory

pytestmark = pytest.mark.timeout(120)

READERS = 50
MESSAGES = 1500
PADDING = "x" * 500  # a contract extension field
SUBSCRIPTIONS = "marketpipe_gateway_subscriptions"
SLOW_DISCONNECTS = 'marketpipe_gateway_disconnects_total{reason="slow"}'
DROPPED_SLOW = 'marketpipe_gateway_dropped_messages_total{reason="slow_client"}'
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
    gateway = start_gateway(gateway_max_pending_bytes=str(1024 * 1024))
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
                await asyncio.sleep(0.01)  # pacing: a steady stream, not one burst
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


def read_to_the_end(sock: socket.socket, within: float) -> bytes:
    """Everything the gateway still sends, until it closes the connection (or ``within``)."""
    sock.settimeout(within)
    received = bytearray()
    with contextlib.suppress(TimeoutError, ConnectionError):
        while chunk := sock.recv(1 << 20):
            received += chunk
    return bytes(received)


def close_frame(code: int, reason: bytes) -> bytes:
    """A server's close frame (RFC 6455 5.5.1): unmasked, the code then the reason."""
    return bytes([0x88, 2 + len(reason)]) + code.to_bytes(2, "big") + reason


async def test_a_burst_reaches_a_reading_client_whole_and_a_stalled_one_is_cut_1013(
    start_gateway: GatewayFactory,
) -> None:
    """Issue 12: 20 000 trades on one topic, published as fast as NATS takes them, with the
    default limits. The reader gets every one in order; the client beside it that never reads
    is cut (1013) once it has been behind past the write deadline."""
    burst = 20_000
    gateway = start_gateway()
    stalled = await asyncio.to_thread(
        stuck_client,
        gateway.port,
        orjson.dumps({"action": "subscribe", "topics": "trades@BNBUSDT,trades@XRPUSDT"}),
    )
    async with aiohttp.ClientSession() as http:

        async def subscribed() -> bool:  # the stalled client's two topics, upstream
            return metric_value(await metrics(http, gateway.http_url), SUBSCRIPTIONS) == 2

        await eventually(subscribed)
        reader = await http.ws_connect(gateway.ws_url)
        assert (await request(reader, "subscribe", "trades@BNBUSDT"))["result"] == "subscribed"
        received: list[int] = []

        async def read_all() -> None:
            while len(received) < burst:
                msg = await reader.receive(timeout=30)
                assert msg.type is aiohttp.WSMsgType.TEXT, (msg, reader.close_code)
                received.append(orjson.loads(msg.data)["data"]["t"])

        reading = asyncio.create_task(read_all())
        nc = await nats.connect(gateway.nats_url)
        started = time.monotonic()
        for t in range(burst):
            await nc.publish("trades.BNBUSDT", orjson.dumps(trade(t, "BNBUSDT")))
        await nc.flush()
        published = time.monotonic() - started
        await asyncio.wait_for(reading, 60)
        delivered = time.monotonic() - started
        await nc.close()
        assert received == list(range(burst))  # all of them, in order, none twice
        assert not reader.closed

        async def cut() -> str | None:
            text = await metrics(http, gateway.http_url)
            return text if metric_value(text, SLOW_DISCONNECTS) == 1 else None

        # the write deadline (10 s) runs from when it fell behind
        text = await eventually(cut, within=30, what="the stalled client cut")
        # it reads at last: what the socket held, then the close frame, last
        tail = await asyncio.to_thread(read_to_the_end, stalled, 10.0)
        await reader.close()
    stalled.close()
    print(f"\n{burst} trades published in {published:.2f} s, all read in {delivered:.2f} s")
    assert tail.endswith(close_frame(1013, b"too slow: write deadline"))
    assert metric_value(text, DROPPED_SLOW) > 0


def snapshot(pairs: int, event_time: int) -> bytes:
    """A markets@SNAPSHOT message (DESIGN §2): ``pairs`` 24 h tickers keyed by symbol."""
    fields = {
        "e": "24hrTicker", "p": "-1.23", "P": "-1.2", "w": "100.5", "Q": "0.5", "b": "100.2",
        "B": "1.5", "a": "100.3", "A": "2.25", "o": "101.5", "h": "102.0", "l": "99.0",
        "v": "123456.789", "q": "9876543.21", "O": 0, "F": 1, "L": 2, "n": 99,
    }  # fmt: skip
    return orjson.dumps(
        {
            f"P{i:04d}USDT": fields
            | {"E": event_time, "C": event_time, "s": f"P{i:04d}USDT", "c": f"{100 + i}.25"}
            for i in range(pairs)
        }
    )


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_two_hundred_stalled_snapshot_clients_cost_bounded_memory_not_the_healthy_one(
    start_gateway: GatewayFactory,
) -> None:
    """The functional version of bench/bench_gateway_slow.py: 200 clients on markets@SNAPSHOT
    that never read. Every frame a client holds is the fan-out's own, shared, so the gateway's
    memory grows by a fixed cost per connection plus the frames published within the time a
    client may hold them (write deadline, then as long for its close frame); the healthy
    client beside them gets every trade and the snapshots, and is never cut."""
    deadline, stalled_count, per_second = 2.0, 200, 2
    gateway = start_gateway(gateway_write_deadline_seconds=str(deadline))
    assert gateway.process.proc is not None
    pid = gateway.process.proc.pid
    size = len(snapshot(2000, 0))
    nc = await nats.connect(gateway.nats_url)
    trades: list[int] = []
    snapshots: list[int] = []
    async with aiohttp.ClientSession() as http:
        healthy = await http.ws_connect(gateway.ws_url)
        topics = "markets@SNAPSHOT,trades@BTCUSDT"
        assert (await request(healthy, "subscribe", topics))["result"] == "subscribed"

        async def read() -> None:
            async for msg in healthy:
                frame = orjson.loads(msg.data)
                if frame["topic"] == "trades@BTCUSDT":
                    trades.append(frame["data"]["t"])
                else:
                    snapshots.append(frame["data"]["P0000USDT"]["E"])

        async def publish(seconds: float) -> None:
            for tick in range(int(seconds * 10)):
                await nc.publish("trades.BTCUSDT", orjson.dumps(trade(len(published_trades))))
                published_trades.append(tick)
                if tick % (10 // per_second) == 0:
                    published_snapshots.append(len(published_snapshots))
                    await nc.publish("markets.SNAPSHOT", snapshot(2000, published_snapshots[-1]))
                await nc.flush()
                await asyncio.sleep(0.1)  # pacing: ten trades a second

        published_trades: list[int] = []
        published_snapshots: list[int] = []
        reading = asyncio.create_task(read())
        await publish(2.0)
        before = rss_bytes(pid)
        peak = before
        subscribe = orjson.dumps({"action": "subscribe", "topics": "markets@SNAPSHOT"})
        stalled = [
            await asyncio.to_thread(stuck_client, gateway.port, subscribe)
            for _ in range(stalled_count)
        ]
        publishing = asyncio.create_task(publish(4 * deadline + 4))
        while not publishing.done():
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(0.1)  # sampling the memory while the publisher runs

        async def only_the_healthy_one() -> str | None:
            text = await metrics(http, gateway.http_url)
            return text if metric_value(text, "marketpipe_gateway_connections") == 1 else None

        text = await eventually(only_the_healthy_one, within=15)
        await eventually(  # the last trades reach the healthy client
            lambda: (
                len(trades) == len(published_trades) and snapshots[-1:] == published_snapshots[-1:]
            ),
            what=lambda: (
                f"{len(trades)} of {len(published_trades)} trades, snapshots {snapshots[-1:]}"
            ),
        )
        await healthy.close()
        await reading
    await nc.close()
    for sock in stalled:
        sock.close()
    volume = per_second * size  # bytes published a second
    bound = before + stalled_count * 64 * 1024 + volume * (2 * deadline + 4)
    print(
        f"\ngateway RSS {before / 2**20:.0f} MB before, peak {peak / 2**20:.0f} MB with "
        f"{stalled_count} stalled clients (bound {bound / 2**20:.0f} MB)"
    )
    assert metric_value(text, SLOW_DISCONNECTS) == stalled_count
    assert metric_value(text, "marketpipe_gateway_connections") == 1
    assert peak <= bound
    assert trades == list(range(len(published_trades)))  # every trade, in order
    assert snapshots and snapshots[-1] == published_snapshots[-1]


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (1: established), read without reading any data."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


@pytest.mark.parametrize(
    ("ping", "deadline"),
    [
        ("0.3", "1"),  # cut by the write deadline while a ping waits for the socket
        ("0.3", "5"),  # closed by aiohttp for the missing pong first
    ],
)
async def test_a_stalled_client_is_let_go_however_its_connection_ends(
    start_gateway: GatewayFactory, ping: str, deadline: str
) -> None:
    """However a stalled client's connection ends, the gateway lets go of its socket and of
    what it holds for it (a graceful close would wait forever to send what the client never
    reads), resetting it: the peer sees the connection end without reading anything."""
    gateway = start_gateway(gateway_ping_seconds=ping, gateway_write_deadline_seconds=deadline)
    subscribe = orjson.dumps({"action": "subscribe", "topics": "trades@SOLUSDT"})
    stalled = await asyncio.to_thread(stuck_client, gateway.port, subscribe)
    nc = await nats.connect(gateway.nats_url)
    for t in range(400):  # more than the socket buffers take: pings wait behind the trades
        await nc.publish(
            "trades.SOLUSDT", orjson.dumps(trade(t, "SOLUSDT") | {"pad": "x" * 20_000})
        )
    await nc.flush()
    await nc.close()
    try:
        await eventually(
            lambda: tcp_state(stalled) != 1,
            within=2 * float(deadline) + 10,
            what="the gateway lets go of the stalled client's connection",
        )
    finally:
        stalled.close()

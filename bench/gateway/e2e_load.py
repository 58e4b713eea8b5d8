"""End-to-end receiver: WebSocket clients of the gateway, or a plain NATS subscriber (the baseline).

    python -m bench.gateway.e2e_load ws URL CLIENTS SYMBOLS
    python -m bench.gateway.e2e_load nats URL 1 SYMBOLS

``SYMBOLS`` is comma-separated. The WebSocket clients each subscribe to ``all@SYMBOL`` for every
symbol; the NATS subscriber takes ``orderbook.*``, ``trades.*`` and ``tickers.*``. Prints
``READY``, then reads one line ``START END`` (wall-clock seconds) from stdin and records every
orderbook, trade and ticker message received in that window: (channel, symbol, message id,
exchange event time ``E`` in ms, receipt time). Prints them as one JSON line once the window
is over, with how any connection that ended early ended. Only the head of each message is
looked at (no JSON parsing: a book is ~15 KB).
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
import urllib.parse
from typing import cast

import nats
import orjson
import uvloop
from nats.aio.msg import Msg

CHANNELS = ("orderbook", "trades", "tickers")
# the field naming a message within its symbol's stream (tickers: none better than E)
ID_FIELD = {"orderbook": b'"seq":', "trades": b'"t":', "tickers": b'"E":'}
TOPIC_START = len(b'{"topic":"')
HEAD_BYTES = 256  # the topic, E and the id are in the first ~130 bytes of every message


def field_int(data: bytes, name: bytes, start: int) -> int:
    at = data.index(name, start) + len(name)
    end = at
    while data[end] in b"0123456789-":
        end += 1
    return int(data[at:end])


class Recorder:
    """Keeps the head of each message received in the window; parses them after it."""

    def __init__(self) -> None:
        self.window = (float("inf"), float("-inf"))
        self.frames: list[tuple[bytes, float]] = []  # gateway frames
        self.messages: list[tuple[str, bytes, float]] = []  # NATS: subject, data
        self.closed: list[str] = []  # how connections that ended early ended

    def on_frame(self, head: bytes, now: float) -> None:
        if self.window[0] <= now <= self.window[1]:
            self.frames.append((head, now))

    async def on_nats(self, msg: Msg) -> None:
        now = time.time()
        if self.window[0] <= now <= self.window[1]:
            self.messages.append((msg.subject, msg.data[:HEAD_BYTES], now))

    def records(self) -> list[tuple[str, str, int, int, float]]:
        """(channel, symbol, message id, E, received) of each message with an id field."""
        found = []
        for head, now in self.frames:  # {"topic":"channel@SYMBOL","data":{...}}
            end = head.index(b'"', TOPIC_START)
            channel, _, symbol = head[TOPIC_START:end].decode().partition("@")
            if channel in ID_FIELD:
                found.append(parse(channel, symbol, head, end, now))
        for subject, data, now in self.messages:
            channel, _, symbol = subject.partition(".")
            found.append(parse(channel, symbol, data, 0, now))
        return found


def parse(
    channel: str, symbol: str, head: bytes, start: int, now: float
) -> tuple[str, str, int, int, float]:
    event_ms = field_int(head, b'"E":', start)
    return (channel, symbol, field_int(head, ID_FIELD[channel], start), event_ms, now)


class LeanClient(asyncio.Protocol):
    """A minimal WebSocket client: one upgrade, then server frames parsed straight off the socket.

    aiohttp's client costs a message object, a queue and a task switch per frame; at thousands
    of 15 KB frames a second on 2 shared cores that would measure this process, not the gateway.
    Every frame of one read gets that read's receipt time.
    """

    def __init__(self, recorder: Recorder, host: str, path: str, first_message: bytes) -> None:
        self.recorder = recorder
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.first_message = first_message
        self.buffer = bytearray()
        self.upgraded = False
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.recorder.closed.append(f"connection lost: {exc!r}")
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError("connection lost"))

    def send(self, opcode: int, payload: bytes) -> None:
        """A client frame: always masked (RFC 6455 5.3)."""
        assert self.transport is not None
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        else:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        self.transport.write(header + mask + masked)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                raise SystemExit(f"upgrade refused: {bytes(buffer[:200])!r}")
            del buffer[: end + 4]
            self.upgraded = True
            self.send(0x1, self.first_message)
        at = 0
        while len(buffer) - at >= 2:
            opcode, length = buffer[at] & 0x0F, buffer[at + 1] & 0x7F
            start = at + 2
            if length == 126:
                length, start = int.from_bytes(buffer[start : start + 2]), start + 2
            elif length == 127:
                length, start = int.from_bytes(buffer[start : start + 8]), start + 8
            if len(buffer) < start + length:
                break
            head = bytes(buffer[start : start + min(length, HEAD_BYTES)])
            if opcode == 0x1:
                if head.startswith(b'{"topic"'):
                    self.recorder.on_frame(head, now)
                elif head.startswith(b'{"result"'):
                    self.subscribed.set_result(None)
                else:
                    raise SystemExit(f"subscribe failed: {head!r}")
            elif opcode == 0x9:
                self.send(0xA, bytes(buffer[start : start + length]))  # pong
            elif opcode == 0x8:
                self.recorder.closed.append(f"closed by the gateway: {head!r}")
            at = start + length
        del buffer[:at]


async def websocket_clients(
    recorder: Recorder, url: str, clients: int, symbols: list[str]
) -> list[asyncio.Transport]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    topics = ",".join(f"all@{s}" for s in symbols)
    subscribe = orjson.dumps({"action": "subscribe", "topics": topics, "id": 1})
    loop = asyncio.get_running_loop()
    transports = []
    for _ in range(clients):
        transport, client = await loop.create_connection(
            lambda: LeanClient(recorder, f"{host}:{port}", parts.path, subscribe), host, port
        )
        await asyncio.wait_for(client.subscribed, 60)
        transports.append(transport)
    return transports


async def main(mode: str, url: str, clients: int, symbols: list[str]) -> None:
    recorder = Recorder()
    if mode == "ws":
        transports = await websocket_clients(recorder, url, clients, symbols)
    else:
        nc = await nats.connect(url, pending_size=512 * 1024 * 1024)
        for channel in CHANNELS:
            await nc.subscribe(f"{channel}.*", cb=recorder.on_nats, pending_msgs_limit=10_000_000)
        await nc.flush()
    print("READY", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start, end = (float(x) for x in line.split())
    recorder.window = (start, end)
    await asyncio.sleep(max(0.0, end - time.time()) + 0.5)
    result = {"records": recorder.records(), "closed": recorder.closed}
    print(orjson.dumps(result).decode(), flush=True)
    if mode == "ws":
        for transport in transports:
            transport.close()
    else:
        await nc.close()


if __name__ == "__main__":
    mode, url, clients, symbols = sys.argv[1:5]
    uvloop.run(main(mode, url, int(clients), symbols.split(",")))

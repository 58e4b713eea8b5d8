"""End-to-end receiver: WebSocket clients of the gateway, or a plain NATS subscriber (the baseline).

    python -m bench.gateway.e2e_load ws URL CLIENTS SYMBOLS
    python -m bench.gateway.e2e_load nats URL 1 SYMBOLS

``SYMBOLS`` is comma-separated. The WebSocket clients each subscribe to ``all@SYMBOL`` for every
symbol; the NATS subscriber takes ``orderbook.*``, ``trades.*`` and ``tickers.*``. Prints
``READY``, then reads one line ``START END`` (wall-clock seconds) from stdin and records every
orderbook, trade and ticker message received in that window: (channel, symbol, message id,
exchange event time ``E`` in ms, receipt time). Prints them as one JSON line once the window
is over. Only the head of each message is looked at (no JSON parsing: a book is ~15 KB).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import aiohttp
import nats
import orjson
import uvloop
from nats.aio.msg import Msg

CHANNELS = ("orderbook", "trades", "tickers")
# the field naming a message within its symbol's stream (tickers: none better than E)
ID_FIELD = {"orderbook": b'"seq":', "trades": b'"t":', "tickers": b'"E":'}
TOPIC_START = len(b'{"topic":"')


def field_int(data: bytes, name: bytes, start: int) -> int:
    at = data.index(name, start) + len(name)
    end = at
    while data[end] in b"0123456789-":
        end += 1
    return int(data[at:end])


class Recorder:
    def __init__(self) -> None:
        self.window = (float("inf"), float("-inf"))
        self.records: list[tuple[str, str, int, int, float]] = []

    def add(self, channel: str, symbol: str, data: bytes, start: int, now: float) -> None:
        if not self.window[0] <= now <= self.window[1]:
            return
        event_ms = field_int(data, b'"E":', start)
        self.records.append(
            (channel, symbol, field_int(data, ID_FIELD[channel], start), event_ms, now)
        )

    def on_frame(self, data: bytes) -> None:
        """A gateway frame: ``{"topic":"channel@SYMBOL","data":{...}}``."""
        now = time.time()
        if not data.startswith(b'{"topic":"'):
            return  # a reply
        end = data.index(b'"', TOPIC_START)
        channel, _, symbol = data[TOPIC_START:end].decode().partition("@")
        if channel in ID_FIELD:
            self.add(channel, symbol, data, end, now)

    async def on_nats(self, msg: Msg) -> None:
        now = time.time()
        channel, _, symbol = msg.subject.partition(".")
        self.add(channel, symbol, msg.data, 0, now)


async def websocket_clients(recorder: Recorder, url: str, clients: int, symbols: list[str]) -> Any:
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    topics = ",".join(f"all@{s}" for s in symbols)
    subscribe = orjson.dumps({"action": "subscribe", "topics": topics, "id": 1})
    sockets = []
    for _ in range(clients):
        ws = await http.ws_connect(url, max_msg_size=0, decode_text=False)
        await ws.send_bytes(subscribe)
        while True:  # the cached values may come before the reply
            reply = await ws.receive(timeout=30)
            if reply.data.startswith(b'{"result"'):
                break
            if not reply.data.startswith(b'{"topic"'):
                raise SystemExit(f"subscribe failed: {reply.data[:300]!r}")
        sockets.append(ws)

    async def read(ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise SystemExit(f"gateway connection ended: {msg!r}")
            recorder.on_frame(msg.data)

    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    return http, readers


async def main(mode: str, url: str, clients: int, symbols: list[str]) -> None:
    recorder = Recorder()
    if mode == "ws":
        http, readers = await websocket_clients(recorder, url, clients, symbols)
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
    print(orjson.dumps(recorder.records).decode(), flush=True)
    if mode == "ws":
        for task in readers:
            task.cancel()
        await http.close()
    else:
        await nc.close()


if __name__ == "__main__":
    mode, url, clients, symbols = sys.argv[1:5]
    uvloop.run(main(mode, url, int(clients), symbols.split(",")))

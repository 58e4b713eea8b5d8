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
import sys
import time

import nats
import orjson
import uvloop
from nats.aio.msg import Msg

from bench.gateway import lean_client
from bench.gateway.lean_client import HEAD_BYTES

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


async def main(mode: str, url: str, clients: int, symbols: list[str]) -> None:
    recorder = Recorder()
    if mode == "ws":
        topics = ",".join(f"all@{s}" for s in symbols)
        subscribe = orjson.dumps({"action": "subscribe", "topics": topics, "id": 1})
        transports = await lean_client.connect(
            url, clients, subscribe, recorder.on_frame, recorder.closed
        )
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

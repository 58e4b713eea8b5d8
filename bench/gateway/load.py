"""Load generator: N WebSocket clients that subscribe, count deliveries and time them.

``python -m bench.gateway.load URL CLIENTS TOPIC EXPECTED SECONDS`` prints ``READY`` once every
client is subscribed, then one JSON line: deliveries, first/last receipt times and a sample of
publish-to-receipt latencies (from the ``sent`` field each published message carries).
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
import uvloop

from bench.gateway import lean_client

SENT_FIELD = b'"sent":'
SAMPLE_EVERY = 10  # parsing every message would cost more than receiving it


async def main(url: str, clients: int, topic: str, expected: int, seconds: float) -> None:
    subscribe = orjson.dumps({"action": "subscribe", "topics": topic})
    total = expected * clients
    deliveries = 0
    latencies: list[float] = []
    first_last = [float("inf"), 0.0]
    done = asyncio.get_running_loop().create_future()

    def on_frame(head: bytes, now: float) -> None:
        nonlocal deliveries
        deliveries += 1
        first_last[0] = min(first_last[0], now)
        first_last[1] = now
        if deliveries % SAMPLE_EVERY == 0:
            at = head.find(SENT_FIELD) + len(SENT_FIELD)
            latencies.append(now - float(head[at : head.index(b",", at)]))
        if deliveries == total and not done.done():
            done.set_result(None)

    ended: list[str] = []
    transports = await lean_client.connect(url, clients, subscribe, on_frame, ended)
    print("READY", flush=True)
    started = time.monotonic()
    while not done.done() and time.monotonic() - started < seconds:
        await asyncio.wait([done], timeout=0.5)
    for transport in transports:
        transport.close()
    result = {
        "deliveries": deliveries,
        "first": first_last[0],
        "last": first_last[1],
        "latencies": latencies,
    }
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    url, clients, topic, expected, seconds = sys.argv[1:6]
    uvloop.run(main(url, int(clients), topic, int(expected), float(seconds)))

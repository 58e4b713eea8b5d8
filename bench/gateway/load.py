"""Load generator: N WebSocket clients that subscribe, count deliveries and time them.

``python -m bench.gateway.load URL CLIENTS TOPIC EXPECTED SECONDS`` prints one JSON line:
deliveries, first/last receipt times and a sample of publish-to-receipt latencies.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
import orjson
import uvloop

SENT_FIELD = '"sent":'


async def main(url: str, clients: int, topic: str, expected: int, seconds: float) -> None:
    subscribe = orjson.dumps({"action": "subscribe", "topics": topic}).decode()
    counts = [0] * clients
    latencies: list[float] = []
    first_last = [float("inf"), 0.0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sockets = [await http.ws_connect(url, max_msg_size=0) for _ in range(clients)]
        for ws in sockets:
            await ws.send_str(subscribe)
        print("READY", flush=True)

        async def read(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            while counts[i] < expected:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    return
                data = msg.data
                at = data.find(SENT_FIELD)
                if at < 0:
                    continue  # a reply
                now = time.time()
                counts[i] += 1
                first_last[0] = min(first_last[0], now)
                first_last[1] = now
                if counts[i] % 10 == 0:  # sample: parsing every message would cost more
                    end = data.find(",", at)
                    latencies.append(now - float(data[at + len(SENT_FIELD) : end]))

        readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
        await asyncio.wait(readers, timeout=seconds)
        for ws in sockets:
            await ws.close()
    result = {
        "deliveries": sum(counts),
        "first": first_last[0],
        "last": first_last[1],
        "latencies": latencies,
    }
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    url, clients, topic, expected, seconds = sys.argv[1:6]
    uvloop.run(main(url, int(clients), topic, int(expected), float(seconds)))

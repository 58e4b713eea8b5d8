"""A healthy client: reads as fast as it can and times every frame it gets.

``python -m bench.gateway.healthy URL TOPICS`` subscribes (one connection), prints ``READY``,
and, once its stdin closes, one JSON line: ``[[channel, receipt time, latency s], ...]`` and how
the connection ended if it did. Latency: receipt minus the publish time the message carries
(``"sent"`` of a trade; ``E``, in ms, of the first ticker of a markets snapshot).
"""

from __future__ import annotations

import asyncio
import sys

import orjson
import uvloop

from bench.gateway import lean_client
from bench.gateway.e2e_load import field_int

SENT = b'"sent":'


async def main(url: str, topics: str) -> None:
    records: list[tuple[str, float, float]] = []

    def on_frame(head: bytes, now: float) -> None:
        if head.startswith(b'{"topic":"trades@'):
            at = head.index(SENT) + len(SENT)
            end = at
            while head[end] in b"0123456789.e-":
                end += 1
            records.append(("trades", now, now - float(head[at:end])))
        elif head.startswith(b'{"topic":"markets@SNAPSHOT"'):
            records.append(("snapshot", now, now - field_int(head, b'"E":', 0) / 1000))

    ended: list[str] = []
    subscribe = orjson.dumps({"action": "subscribe", "topics": topics})
    transports = await lean_client.connect(url, 1, subscribe, on_frame, ended)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for transport in transports:
        transport.close()
    print(orjson.dumps({"records": records, "ended": ended}).decode(), flush=True)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2]))

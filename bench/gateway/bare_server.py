"""The baseline: a bare aiohttp WebSocket server that sends every NATS message to every client.

No protocol, no queues, no limits: ``python -m bench.gateway.bare_server PORT NATS_URL SUBJECT``.
"""

from __future__ import annotations

import asyncio
import sys

import nats
import uvloop
from aiohttp import WSMsgType, web
from nats.aio.msg import Msg


async def main(port: int, nats_url: str, subject: str) -> None:
    clients: set[web.WebSocketResponse] = set()
    prefix = b'{"topic":"' + subject.replace(".", "@").encode() + b'","data":'

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        clients.add(ws)
        try:
            async for _ in ws:  # everyone gets everything: a subscribe is only acknowledged
                await ws.send_str('{"result":"subscribed"}')
        finally:
            clients.discard(ws)
        return ws

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ready\n")

    async def on_message(msg: Msg) -> None:
        frame = prefix + msg.data + b"}"
        for ws in list(clients):
            try:
                await ws.send_frame(frame, WSMsgType.TEXT)
            except ConnectionError:
                clients.discard(ws)

    nc = await nats.connect(nats_url)
    await nc.subscribe(subject, cb=on_message)
    app = web.Application()
    app.router.add_get("/ws", handle)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))

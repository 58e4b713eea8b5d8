"""A tiny exchange stand-in for the client's shell tests until the simulator is wired in.

One global update-id counter per stream (like the exchange): every connection subscribed to a
stream gets the same ``U``/``u`` sequence, so a client can check continuity across connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Conn:
    ws: web.WebSocketResponse
    streams: set[str]
    silent: bool = False


@dataclass
class FakeExchange:
    tick_seconds: float = 0.01
    conns: list[Conn] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    rest_replies: list[tuple[int, dict[str, str], Any]] = field(default_factory=list)
    rest_log: list[tuple[float, str]] = field(default_factory=list)
    connects: int = 0
    runner: web.AppRunner | None = None
    url: str = ""
    _pump: asyncio.Task[None] | None = None

    async def start(self) -> FakeExchange:
        app = web.Application()
        app.router.add_get("/stream", self._stream)
        app.router.add_get("/api/v3/{endpoint:.*}", self._rest)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._pump = asyncio.create_task(self._emit())
        return self

    async def stop(self) -> None:
        if self._pump:
            self._pump.cancel()
        for conn in list(self.conns):
            await conn.ws.close()
        if self.runner:
            await self.runner.cleanup()

    async def _rest(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        self.rest_log.append((loop.time(), request.match_info["endpoint"]))
        status, headers, body = (
            self.rest_replies.pop(0)
            if self.rest_replies
            else (200, {}, {"lastUpdateId": 7, "bids": [["1.0", "2.0"]], "asks": []})
        )
        return web.Response(status=status, headers=headers, body=orjson.dumps(body))

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connects += 1
        streams = set(filter(None, request.query.get("streams", "").split("/")))
        conn = Conn(ws, streams)
        self.conns.append(conn)
        try:
            async for msg in ws:
                req = orjson.loads(msg.data)
                params = set(req["params"])
                if req["method"] == "SUBSCRIBE":
                    conn.streams |= params
                else:
                    conn.streams -= params
                await ws.send_bytes(orjson.dumps({"result": None, "id": req["id"]}))
        finally:
            self.conns.remove(conn)
        return ws

    async def _emit(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            for stream in {s for c in self.conns for s in c.streams}:
                u = self.counters.get(stream, 0) + 1
                self.counters[stream] = u
                frame = orjson.dumps(
                    {"stream": stream, "data": {"e": "depthUpdate", "U": u, "u": u}}
                )
                for conn in list(self.conns):
                    if stream in conn.streams and not conn.silent and not conn.ws.closed:
                        with contextlib.suppress(ConnectionError):
                            await conn.ws.send_bytes(frame)

    async def kill_connections(self) -> None:
        for conn in list(self.conns):
            transport = conn.ws._req.transport if conn.ws._req else None
            if transport:
                transport.abort()  # like a network drop: no close handshake

    async def send_server_shutdown(self) -> None:
        frame = {"stream": "!serverShutdown", "data": {"e": "serverShutdown", "E": 1}}
        for conn in list(self.conns):
            await conn.ws.send_bytes(orjson.dumps(frame))

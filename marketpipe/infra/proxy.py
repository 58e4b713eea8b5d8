"""A controllable TCP proxy for fault tests: one process's connection to NATS, Redis, etcd or the
exchange can be stalled, reset, slowed or refused while every other process keeps its own.

Run as a child process (``python -m marketpipe.infra.proxy --target HOST:PORT``) through
:class:`FaultProxy`, which tests drive::

    proxy = FaultProxy(target_port=redis.port).start()   # listens on proxy.port
    proxy.stall()            # connections stay open, nothing is forwarded either way
    proxy.heal()             # forwarding again (what was held goes on, in order)
    proxy.reset()            # every open connection is reset (RST) on both sides
    proxy.refuse()           # open connections reset, new ones reset at once
    proxy.delay(0.2)         # each chunk is forwarded 200 ms after it arrived

A stall models a partition faithfully: bytes sent into it are held "in the network" and arrive
after the heal, unless their sender aborts the connection (RST) first, in which case they are
lost, as a real sender's unacknowledged bytes are when it resets. (The kernel cannot do this
for us: a socket keeps readable what it received even after the peer's RST.) A graceful close
(FIN) during a stall is delivered after what was held, on the heal.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import sys
import tempfile
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from marketpipe.infra.local import Process, _http_ok, free_port
from marketpipe.transport.sockets import abort_with_reset

PASS, STALL, REFUSE = "pass", "stall", "refuse"
MODES = (PASS, STALL, REFUSE)
READ_PAUSE_BYTES = 4 * 1024 * 1024  # a side this far behind stops reading (back-pressure)
HOLD_LIMIT_BYTES = 256 * 1024 * 1024  # a stall holds at most this much per direction


@dataclass
class _Settings:
    mode: str = PASS
    delay: float = 0.0


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it reads goes to its peer side."""

    def __init__(self, link: _Link, name: str) -> None:
        self.link = link
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        # bytes read here, not yet written to the peer: (due time, data); None marks EOF
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued_bytes = 0
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.link.opened(self)

    def data_received(self, data: bytes) -> None:
        self._enqueue(data, len(data))

    def eof_received(self) -> bool:
        self._enqueue(None, 0)
        return True  # closed by pump() once what came before the EOF is forwarded

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self.link.lost(self, reset=exc is not None)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def _enqueue(self, data: bytes | None, size: int) -> None:
        loop = asyncio.get_running_loop()
        self.queue.append((loop.time() + self.link.settings.delay, data))
        self.queued_bytes += size
        limit = READ_PAUSE_BYTES if self.link.settings.mode == PASS else HOLD_LIMIT_BYTES
        if self.queued_bytes > limit:
            self.pause_reading()
        self.pump()

    def pump(self) -> None:
        """Forward what is due, unless the proxy stalls or the peer is not connected yet."""
        self._cancel_timer()
        peer = self.peer
        if self.link.settings.mode != PASS or peer is None or peer.transport is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        chunks: list[bytes] = []
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:  # the sender closed: what it sent goes first, then both close
                if chunks and not peer.closed:
                    peer.transport.writelines(chunks)
                self.drop_queue()
                peer.transport.close()
                if self.transport is not None:
                    self.transport.close()
                return
            self.queued_bytes -= len(data)
            chunks.append(data)
        if chunks and not peer.closed:
            peer.transport.writelines(chunks)
        if self.queued_bytes <= READ_PAUSE_BYTES:
            self.resume_reading()
        if self.queue:
            self._timer = loop.call_at(self.queue[0][0], self.pump)

    def drop_queue(self) -> None:
        self.queue.clear()
        self.queued_bytes = 0
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Link:
    """A client connection and its upstream connection."""

    def __init__(self, proxy: _Proxy) -> None:
        self.proxy = proxy
        self.settings = proxy.settings
        self.client = _Side(self, "client")
        self.upstream = _Side(self, "upstream")
        self.client.peer, self.upstream.peer = self.upstream, self.client

    def opened(self, side: _Side) -> None:
        if side is self.client:
            self.proxy.links.add(self)
            if self.settings.mode == REFUSE:
                assert side.transport is not None
                abort_with_reset(side.transport)
                return
            asyncio.get_running_loop().create_task(self._connect_upstream())
        else:
            self.client.pump()  # what the client sent while we connected

    async def _connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self.upstream, *self.proxy.target)
        except OSError:
            if self.client.transport is not None and not self.client.closed:
                abort_with_reset(self.client.transport)

    def lost(self, side: _Side, reset: bool) -> None:
        peer = side.peer
        assert peer is not None
        if reset:
            # what this side sent is lost with it, as a reset sender's unacknowledged bytes are
            side.drop_queue()
            if peer.transport is not None and not peer.closed:
                abort_with_reset(peer.transport)
        else:
            side.queue.append((0.0, None))
            side.pump()
        if self.client.closed and (self.upstream.closed or self.upstream.transport is None):
            self.proxy.links.discard(self)

    def reset(self) -> None:
        for side in (self.client, self.upstream):
            side.drop_queue()
            if side.transport is not None and not side.closed:
                abort_with_reset(side.transport)

    def pump(self) -> None:
        self.client.pump()
        self.upstream.pump()

    @property
    def held_bytes(self) -> int:
        return self.client.queued_bytes + self.upstream.queued_bytes


class _Proxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.settings = _Settings()
        self.links: set[_Link] = set()

    def set_mode(self, mode: str, delay: float | None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.settings.mode = mode
        if delay is not None:
            self.settings.delay = max(0.0, delay)
        if mode == REFUSE:
            self.reset()
        for link in list(self.links):
            link.pump()

    def reset(self) -> None:
        for link in list(self.links):
            link.reset()

    def status(self) -> dict[str, object]:
        return {
            "mode": self.settings.mode,
            "delay": self.settings.delay,
            "connections": len(self.links),
            "held_bytes": sum(link.held_bytes for link in self.links),
        }


async def serve(listen_port: int, control_port: int, target: tuple[str, int]) -> None:
    from aiohttp import web

    proxy = _Proxy(target)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Link(proxy).client, "127.0.0.1", listen_port, reuse_address=True
    )

    async def mode(request: web.Request) -> web.Response:
        body = await request.json()
        try:
            proxy.set_mode(str(body["mode"]), body.get("delay"))
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(proxy.status())

    async def reset(_request: web.Request) -> web.Response:
        proxy.reset()
        return web.json_response(proxy.status())

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(proxy.status())

    app = web.Application()
    app.router.add_post("/mode", mode)
    app.router.add_post("/reset", reset)
    app.router.add_get("/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    async with server:
        await server.serve_forever()


@dataclass
class FaultProxy:
    """A proxy child process in front of ``target_host:target_port``; listens on ``port``."""

    target_port: int
    target_host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mp-proxy-")))
    process: Process | None = None

    def start(self) -> FaultProxy:
        self.process = Process(
            name=f"proxy-{self.target_port}",
            argv=[
                sys.executable,
                "-m",
                "marketpipe.infra.proxy",
                "--port",
                str(self.port),
                "--control-port",
                str(self.control_port),
                "--target",
                f"{self.target_host}:{self.target_port}",
            ],
            healthy=functools.partial(_http_ok, f"{self._control}/status"),
            log_path=self.workdir / "proxy.log",
        )
        self.process.start()
        return self

    @property
    def _control(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def url(self, scheme: str) -> str:
        """The proxied address as ``scheme://127.0.0.1:port`` (``nats``, ``redis``, ``http``)."""
        return f"{scheme}://127.0.0.1:{self.port}"

    def _post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            self._control + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return dict(json.load(response))

    def heal(self) -> None:
        self._post("/mode", {"mode": PASS, "delay": 0.0})

    def stall(self) -> None:
        self._post("/mode", {"mode": STALL})

    def refuse(self) -> None:
        self._post("/mode", {"mode": REFUSE})

    def delay(self, seconds: float) -> None:
        self._post("/mode", {"mode": PASS, "delay": seconds})

    def reset(self) -> None:
        self._post("/reset", {})

    def status(self) -> dict[str, object]:
        with urllib.request.urlopen(f"{self._control}/status", timeout=5) as response:
            return dict(json.load(response))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    import uvloop

    uvloop.run(serve(args.port, args.control_port, (host or "127.0.0.1", int(port))))


if __name__ == "__main__":
    main()

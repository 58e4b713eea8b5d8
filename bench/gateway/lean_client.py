"""A minimal WebSocket client for the load generators (``e2e_load``, ``load``)."""

from __future__ import annotations

import asyncio
import os
import struct
import time
import urllib.parse
from collections.abc import Callable
from typing import cast

HEAD_BYTES = 256  # the topic, E, ids and the bench's "sent" are in the first ~130 bytes

FrameHandler = Callable[[bytes, float], None]


def upgrade_request(host: str, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: always masked (RFC 6455 5.3)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    return header + mask + masked


class LeanClient(asyncio.Protocol):
    """A minimal WebSocket client: one upgrade, then server frames parsed straight off the socket.

    aiohttp's client costs a message object, a queue and a task switch per frame; at thousands
    of 15 KB frames a second on 2 shared cores that would measure this process, not the gateway.
    Every frame of one read gets that read's receipt time; ``on_frame`` gets the first
    ``HEAD_BYTES`` of each data frame. How a connection ended is appended to ``ended``.
    """

    def __init__(
        self, host: str, path: str, first_message: bytes, on_frame: FrameHandler, ended: list[str]
    ) -> None:
        self.on_frame = on_frame
        self.ended = ended
        self.request = upgrade_request(host, path)
        self.first_message = first_message
        self.buffer = bytearray()
        self.upgraded = False
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.append(f"connection lost: {exc!r}")
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError("connection lost"))

    def send(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(opcode, payload))

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
                    self.on_frame(head, now)
                elif head.startswith(b'{"result"'):
                    self.subscribed.set_result(None)
                else:
                    raise SystemExit(f"subscribe failed: {head!r}")
            elif opcode == 0x9:
                self.send(0xA, bytes(buffer[start : start + length]))  # pong
            elif opcode == 0x8:
                self.ended.append(f"closed by the gateway: {head!r}")
            at = start + length
        del buffer[:at]


async def connect(
    url: str, clients: int, first_message: bytes, on_frame: FrameHandler, ended: list[str]
) -> list[asyncio.Transport]:
    """``clients`` connections, each sending ``first_message`` and waiting for its reply."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    transports = []
    for _ in range(clients):
        transport, client = await loop.create_connection(
            lambda: LeanClient(f"{host}:{port}", parts.path, first_message, on_frame, ended),
            host,
            port,
        )
        await asyncio.wait_for(client.subscribed, 60)
        transports.append(transport)
    return transports

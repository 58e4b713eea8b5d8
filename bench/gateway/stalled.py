"""Stalled clients: N WebSocket clients that subscribe and then never read their sockets.

``python -m bench.gateway.stalled URL CLIENTS TOPICS`` opens the connections (receive buffer
4 KiB, as a phone on a dead link), reads each upgrade answer, sends one subscribe and reads
nothing after. Prints ``READY <seconds it took>`` once every client has subscribed, then waits
for its stdin to close.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import urllib.parse

import orjson
import uvloop

from bench.gateway.lean_client import client_frame, upgrade_request

RECEIVE_BUFFER = 4096
CONCURRENT_CONNECTS = 50


async def stall(host: str, port: int, path: str, subscribe: bytes) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    await loop.sock_sendall(sock, upgrade_request(f"{host}:{port}", path))
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = await loop.sock_recv(sock, 1024)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"upgrade refused: {answer[:200]!r}")
    await loop.sock_sendall(sock, client_frame(0x1, subscribe))
    return sock


async def main(url: str, clients: int, topics: str) -> None:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    subscribe = orjson.dumps({"action": "subscribe", "topics": topics})
    started = time.monotonic()
    gate = asyncio.Semaphore(CONCURRENT_CONNECTS)

    async def one() -> socket.socket:
        async with gate:
            return await stall(host, port, parts.path, subscribe)

    socks = await asyncio.gather(*(one() for _ in range(clients)))
    print(f"READY {time.monotonic() - started:.2f}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for sock in socks:
        sock.close()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))

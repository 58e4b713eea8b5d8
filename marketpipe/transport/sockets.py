"""Socket helpers shared by the transports and the test harness."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


def abort_with_reset(transport: asyncio.BaseTransport) -> None:
    """Close at once with RST, discarding what is buffered here and in the kernel (SO_LINGER 0):
    nothing written to this connection arrives after this call."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]

"""The fault proxy itself, against a plain TCP sink and echo server on loopback."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from marketpipe.infra.proxy import FaultProxy
from tests.eventually import eventually_sync


class Sink:
    """Accepts connections, records what each sends, echoes it back."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received: list[bytearray] = []
        self.closed: list[str] = []  # how each connection ended: "eof" or "reset"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            buffer = bytearray()
            with self._lock:
                self.received.append(buffer)
            threading.Thread(target=self._serve, args=(conn, buffer), daemon=True).start()

    def _serve(self, conn: socket.socket, buffer: bytearray) -> None:
        how = "eof"
        try:
            while data := conn.recv(65536):
                with self._lock:
                    buffer.extend(data)
                conn.sendall(data)
        except ConnectionResetError:
            how = "reset"
        except OSError:
            how = "error"
        with self._lock:
            self.closed.append(how)
        conn.close()

    def total(self) -> int:
        with self._lock:
            return sum(len(b) for b in self.received)

    def stop(self) -> None:
        self.server.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.stop()


@pytest.fixture
def proxy(sink: Sink) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(target_port=sink.port).start()
    yield fault_proxy
    fault_proxy.stop()


def connect(proxy: FaultProxy) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    return conn


def recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data)


def test_passes_bytes_both_ways(proxy: FaultProxy, sink: Sink) -> None:
    conn = connect(proxy)
    conn.sendall(b"hello" * 1000)
    assert recv_exactly(conn, 5000) == b"hello" * 1000
    conn.close()
    eventually_sync(lambda: sink.closed == ["eof"])


def test_a_stall_holds_bytes_until_healed(proxy: FaultProxy, sink: Sink) -> None:
    conn = connect(proxy)
    conn.sendall(b"a")
    assert recv_exactly(conn, 1) == b"a"
    proxy.stall()
    conn.sendall(b"b" * 100_000)
    eventually_sync(lambda: proxy.status()["held_bytes"] == 100_000)
    assert sink.total() == 1
    proxy.heal()
    assert recv_exactly(conn, 100_000) == b"b" * 100_000
    assert sink.total() == 100_001


def test_bytes_held_by_a_stall_are_lost_when_their_sender_resets(
    proxy: FaultProxy, sink: Sink
) -> None:
    conn = connect(proxy)
    conn.sendall(b"a")
    assert recv_exactly(conn, 1) == b"a"
    proxy.stall()
    conn.sendall(b"old" * 10_000)
    eventually_sync(lambda: proxy.status()["held_bytes"] == 30_000)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    proxy.heal()
    eventually_sync(lambda: sink.closed == ["reset"])
    assert sink.total() == 1


def test_reset_cuts_both_sides(proxy: FaultProxy, sink: Sink) -> None:
    conn = connect(proxy)
    conn.sendall(b"a")
    assert recv_exactly(conn, 1) == b"a"
    proxy.reset()
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        for _ in range(100):
            conn.sendall(b"x" * 1000)
            if not conn.recv(1000):
                raise ConnectionResetError
    eventually_sync(lambda: sink.closed == ["reset"])
    again = connect(proxy)  # the proxy itself keeps serving
    again.sendall(b"z")
    assert recv_exactly(again, 1) == b"z"


def test_refuse_resets_new_connections_until_healed(proxy: FaultProxy) -> None:
    proxy.refuse()
    # reset at once: during the handshake, or on the first read or write
    with pytest.raises((ConnectionResetError, BrokenPipeError, ConnectionRefusedError)):
        conn = connect(proxy)
        conn.sendall(b"x")
        if not conn.recv(1):
            raise ConnectionResetError
    proxy.heal()
    conn = connect(proxy)
    conn.sendall(b"y")
    assert recv_exactly(conn, 1) == b"y"


def test_delay_adds_latency_and_keeps_order(proxy: FaultProxy) -> None:
    conn = connect(proxy)
    proxy.delay(0.3)
    started = time.monotonic()
    for i in range(10):
        conn.sendall(bytes([65 + i]))
    assert recv_exactly(conn, 10) == b"ABCDEFGHIJ"
    assert time.monotonic() - started >= 0.5  # there and back, 0.3 s each way

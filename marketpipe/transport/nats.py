"""NATS: one client per process that publishes (services) and subscribes (gateway, tests).

Usage::

    nats = NatsClient(settings.nats_urls, subject_prefix=settings.subject_prefix, name="trades")
    await nats.connect()                      # retries until a node answers
    await nats.publish("trades.BTCUSDT", b"{...}")
    sub = await nats.subscribe("orderbook.*", on_message)   # on_message(subject, data)
    await nats.drain()                        # on shutdown: flush what is buffered, then close

Subjects are given without ``Settings.subject_prefix``; the client adds it on the way out and
strips it on the way in. The client reconnects to any node of the cluster forever: a lost node
is never a fatal exit. While disconnected, publishes are buffered by nats-py up to
``pending_size`` bytes; beyond that they are dropped and counted (core NATS is at-most-once).

A payload larger than the server's ``max_payload`` raises :class:`PayloadTooLargeError` (also
logged and counted): it is a bug or a sizing problem someone must see, never a silent loss.

``publish_now`` is ``publish`` without a coroutine, for hot loops (the order book publisher sends
~18 k books/s). Publishes wait in this client's own queue, not in nats-py's, each with the
leadership term (:class:`~marketpipe.ha.term.Term`) it was published under, and go to the socket
at the loop's next turn (or at once with ``send_queued``, which the order book publisher calls
after each batch) as one ``writev`` of the ``PUB`` lines and payloads, never copied. That is what
fencing needs (DESIGN §8): a term that ended takes its unsent messages with it (``discard``), a
message is checked against its term as it leaves, and ``reset_connection`` aborts the socket
(RST) so that bytes of a term that ended while the connection was stalled never arrive. The
queue is written straight to nats-py's socket (``_transport._io_writer``), so nats-py is pinned
to the minor version whose internals tests/transport/test_nats_internals.py checks.
While connected, more than :data:`OUTGOING_LIMIT_BYTES` waiting for the socket means NATS is not
keeping up: messages are then dropped and counted rather than queued without bound; while
disconnected, at most :data:`RECONNECT_BUFFER_BYTES` wait for the reconnect.
Server addresses are logged without their credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import cast
from urllib.parse import urlsplit, urlunsplit

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from prometheus_client import Counter

from marketpipe.exchange.backoff import Backoff
from marketpipe.ha.term import Fence
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import (
    NATS_CONNECTED,
    NATS_RECONNECTS,
    PUBLISH_ERRORS,
    PUBLISHED_MESSAGES,
)
from marketpipe.transport.sockets import abort_with_reset

log = get_logger("marketpipe.transport.nats")

MessageHandler = Callable[[str, bytes], Awaitable[None]]

# nats-py buffers this much while reconnecting (a reconnect to another node takes milliseconds;
# 8 MB is ~0.4 s of the services' whole output).
RECONNECT_BUFFER_BYTES = 8 * 1024 * 1024
# Waiting for the socket while connected: ~0.2 s of the order book's whole output, enough for
# every book of a new leader's first round at once.
OUTGOING_LIMIT_BYTES = 64 * 1024 * 1024
_CRLF = b"\r\n"
# nats-py waits this long before trying a server it tried last: a publisher whose connection
# was reset is back within about this (its default of 2 s would keep books dark that long)
RECONNECT_WAIT_SECONDS = 0.1


class PayloadTooLargeError(Exception):
    """A message exceeded the connected server's ``max_payload``."""

    def __init__(self, subject: str, size: int, limit: int) -> None:
        super().__init__(
            f"payload of {size} bytes on {subject!r} exceeds the server's max_payload of "
            f"{limit} bytes; raise max_payload on the NATS servers"
        )
        self.subject = subject
        self.size = size
        self.limit = limit


class NatsClient:
    def __init__(
        self,
        urls: Sequence[str],
        subject_prefix: str = "",
        name: str = "marketpipe",
        reconnect_wait: float = RECONNECT_WAIT_SECONDS,
        drain_seconds: float = 5.0,
        outgoing_limit_bytes: int = OUTGOING_LIMIT_BYTES,
        reconnect_buffer_bytes: int = RECONNECT_BUFFER_BYTES,
    ) -> None:
        self.urls = list(urls)
        self.prefix = subject_prefix
        self.name = name
        self._reconnect_wait = reconnect_wait
        self.drain_seconds = drain_seconds
        self._limits = (outgoing_limit_bytes, reconnect_buffer_bytes)
        self._nc = Client()
        # per subject: the labelled counter (.labels() costs ~1 µs) and b"PUB <subject> "
        self._published: dict[str, tuple[Counter, bytes]] = {}
        # publishes not yet handed to the socket, oldest first: (term or None, PUB line, payload)
        self._queue: deque[tuple[Fence | None, bytes, bytes]] = deque()
        self._queued_bytes = 0
        self._write_scheduled = False
        self._drainer: asyncio.Task[None] | None = None
        self._discarded: Counter = PUBLISH_ERRORS.labels("any", "term_ended")
        # monotonic time of the last lost connection: what arrived around it may be missing
        self.last_disconnect: float | None = None
        self._reconnect_listeners: list[Callable[[], None]] = []

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload)

    @property
    def outgoing_bytes(self) -> int:
        """Bytes published but not yet handed to the socket."""
        return self._queued_bytes

    @property
    def connected_url(self) -> str | None:
        url = self._nc.connected_url
        return redact_url(url.geturl()) if url is not None else None

    async def connect(self) -> None:
        """Connect to any node, retrying forever (with backoff) until one answers."""
        backoff = Backoff(base=self._reconnect_wait, cap=5.0)
        while True:
            try:
                await self._nc.connect(
                    servers=self.urls,
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self._reconnect_wait,  # type: ignore[arg-type]
                    connect_timeout=2,
                    ping_interval=5,
                    max_outstanding_pings=3,
                    pending_size=self._limits[1],
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
            except (OSError, NatsError, TimeoutError) as exc:
                log.warning(
                    "nats connect failed; retrying",
                    urls=[redact_url(u) for u in self.urls],
                    error=repr(exc),
                )
                await asyncio.sleep(backoff.next_delay())
                self._nc = Client()
                continue
            NATS_CONNECTED.set(1)
            log.info("nats connected", url=self.connected_url, max_payload=self.max_payload)
            return

    async def publish(self, subject: str, payload: bytes, term: Fence | None = None) -> bool:
        """Publish ``payload`` on ``prefix + subject``; the channel label is its first token."""
        return self.publish_now(subject, payload, term)

    def publish_now(self, subject: str, payload: bytes, term: Fence | None = None) -> bool:
        """:meth:`publish` without awaiting: queued, sent at the loop's next turn (in order with
        every other publish) while ``term`` (if given) lasts. Returns whether it was queued;
        a refusal is counted and logged. Raises :class:`PayloadTooLargeError`."""
        known = self._published.get(subject)
        if known is None:
            counter = PUBLISHED_MESSAGES.labels(subject.partition(".")[0])
            head = f"PUB {self.prefix}{subject} ".encode()
            known = self._published[subject] = (counter, head)
        size = len(payload)
        if size > self._nc.max_payload:
            channel = subject.partition(".")[0]
            PUBLISH_ERRORS.labels(channel, "too_large").inc()
            error = PayloadTooLargeError(subject, size, self._nc.max_payload)
            log.error("publish rejected", subject=subject, size=size, error=str(error))
            raise error
        refused = self._refusal(size)
        if refused is not None:
            PUBLISH_ERRORS.labels(subject.partition(".")[0], refused).inc()
            log.warning("publish dropped", subject=subject, reason=refused)
            return False
        line = b"%s%d\r\n" % (known[1], size)
        self._queue.append((term, line, payload))
        self._queued_bytes += len(line) + size + 2
        if not self._write_scheduled:
            self._write_scheduled = True
            asyncio.get_running_loop().call_soon(self._write)
        known[0].inc()
        return True

    def send_queued(self) -> None:
        """Hand what is queued to the socket now rather than at the loop's next turn, unless
        the socket is still busy with earlier bytes (then the next turn does)."""
        writer = self._socket_writer()
        if writer is not None and not writer.transport.get_write_buffer_size():
            self._write_to(writer)

    def discard(self, term: Fence) -> int:
        """Forget every queued publish of ``term`` (it ended); returns how many."""
        kept = [entry for entry in self._queue if entry[0] is not term]
        dropped = len(self._queue) - len(kept)
        if dropped:
            self._queue = deque(kept)
            self._queued_bytes = sum(len(line) + len(p) + 2 for _, line, p in kept)
            self._discarded.inc(dropped)
            log.info("nats publishes discarded", count=dropped, reason="term ended")
        return dropped

    def reset_connection(self) -> None:
        """Abort the socket with RST, so that nothing already handed to it arrives any more,
        then reconnect (nats-py does, as for any lost connection)."""
        writer = self._socket_writer()
        if writer is not None:
            log.warning("nats connection reset", url=self.connected_url, reason="fencing")
            abort_with_reset(writer.transport)

    def _socket_writer(self) -> asyncio.StreamWriter | None:
        if not self._nc.is_connected:
            return None
        writer = getattr(self._nc._transport, "_io_writer", None)  # nats-py's TcpTransport
        if writer is None or writer.transport.is_closing():
            return None
        return cast(asyncio.StreamWriter, writer)

    def _write(self) -> None:
        """The loop's turn: everything queued goes to the socket, which buffers it; beyond the
        socket's high-water mark the rest waits until it drains (memory stays bounded by the
        queue's limit while a server stalls)."""
        self._write_scheduled = False
        writer = self._socket_writer()
        if writer is None or (self._drainer is not None and not self._drainer.done()):
            return  # on reconnect, or once the socket drained
        self._write_to(writer)
        transport = writer.transport
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            self._drainer = asyncio.get_running_loop().create_task(
                self._write_when_drained(writer), name="nats-drain"
            )

    async def _write_when_drained(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # lost: nats-py reconnects
            await writer.drain()
        self._drainer = None
        self._write()

    def _write_to(self, writer: asyncio.StreamWriter) -> None:
        if not self._queue:
            return
        chunks: list[bytes] = []
        stale = 0
        for term, line, payload in self._queue:
            if term is None or term.valid():
                chunks += (line, payload, _CRLF)
            else:
                stale += 1
        self._queue.clear()
        self._queued_bytes = 0
        if stale:
            self._discarded.inc(stale)
        if chunks:
            try:
                writer.writelines(chunks)
            except (RuntimeError, OSError) as exc:  # closed under us: nats-py reconnects
                PUBLISH_ERRORS.labels("any", "connection_lost").inc(len(chunks) // 3)
                log.warning("nats write failed", error=repr(exc))

    def _refusal(self, size: int) -> str | None:
        """Why a message of ``size`` bytes cannot be queued now (nats-py's own rules, and a
        bound); None: it can."""
        nc = self._nc
        if nc.is_closed:
            return "ConnectionClosedError"
        if nc.is_draining_pubs:
            return "ConnectionDrainingError"
        limit = self._limits[0] if nc.is_connected else self._limits[1]
        if self._queued_bytes + size > limit:
            return "OutboundBufferLimitError"
        return None

    async def subscribe(self, subject: str, handler: MessageHandler) -> Subscription:
        """Call ``handler(subject_without_prefix, data)`` for each message; returns the handle
        (``await sub.unsubscribe()``)."""
        cut = len(self.prefix)

        async def deliver(msg: Msg) -> None:
            await handler(msg.subject[cut:], msg.data)

        return await self._nc.subscribe(self.prefix + subject, cb=deliver)

    async def answer(self, subject: str, responder: Callable[[bytes], bytes | None]) -> None:
        """Reply ``responder(request)`` to each request on ``subject`` (None: no reply)."""

        async def deliver(msg: Msg) -> None:
            reply = responder(msg.data) if msg.reply else None
            if reply is not None:
                await self._nc.publish(msg.reply, reply)

        await self._nc.subscribe(self.prefix + subject, cb=deliver)

    async def ask_all(self, subject: str, payload: bytes, within: float) -> list[bytes]:
        """Every reply to one request on ``subject`` that arrives within ``within`` seconds
        (a request to all who answer it, not to the first)."""
        replies: list[bytes] = []

        async def collect(msg: Msg) -> None:
            replies.append(msg.data)

        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, cb=collect)
        try:
            await self._nc.publish(self.prefix + subject, payload, reply=inbox)
            await asyncio.sleep(within)
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        return replies

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each reconnect, once what was queued went to the socket."""
        self._reconnect_listeners.append(listener)

    async def flush(self) -> None:
        """Wait until the server has everything published so far."""
        while self._queue and self._nc.is_connected:
            writer = self._socket_writer()
            if writer is None:
                await asyncio.sleep(0.01)  # the socket is being replaced
                continue
            with contextlib.suppress(OSError, RuntimeError):
                await writer.drain()
            self._write_to(writer)
        await self._nc.flush()

    async def drain(self) -> None:
        """Send what is queued, finish subscriptions, close. Never raises."""
        if self._nc.is_closed:
            return
        try:
            async with asyncio.timeout(self.drain_seconds):
                if self._nc.is_connected:
                    await self.flush()
                    await self._nc.drain()
                else:
                    await self._nc.close()
        except (NatsError, TimeoutError, OSError) as exc:
            log.warning("nats drain incomplete", error=repr(exc))
            await self._nc.close()
        NATS_CONNECTED.set(0)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats error", error=repr(exc))

    async def _on_disconnected(self) -> None:
        self.last_disconnect = time.monotonic()
        NATS_CONNECTED.set(0)
        log.warning("nats disconnected")

    async def _on_reconnected(self) -> None:
        NATS_CONNECTED.set(1)
        NATS_RECONNECTS.inc()
        log.info("nats reconnected", url=self.connected_url)
        self._write()
        for listener in self._reconnect_listeners:
            listener()


def redact_url(url: str) -> str:
    """``nats://user:secret@host:4222`` -> ``nats://***@host:4222`` (for logs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def connect(
    urls: Sequence[str], subject_prefix: str = "", name: str = "marketpipe"
) -> NatsClient:
    """A connected :class:`NatsClient` (convenience for tools and tests)."""
    client = NatsClient(urls, subject_prefix, name)
    await client.connect()
    return client

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
~18 k books/s): the ``PUB`` frame goes straight into nats-py's outgoing buffer and nats-py's
flusher is woken, as its own ``publish`` does, minus six nested awaits and both copies of the
payload (the line, the payload and CRLF go to the socket as one ``writev``): ~2 us less per book
at 18 k books/s (bench b, ``docs/orderbook.md``). It uses nats-py's buffer (``_pending``,
``_pending_data_size``, ``_flush_queue``), so the version is pinned below 3 and the tests publish
through it against a real cluster. ``send_queued`` hands what is queued to the socket at once
(the order book publisher calls it after each batch of books), so a batch leaves without waiting
for the flusher's turn behind every other task.
While connected, more than :data:`OUTGOING_LIMIT_BYTES` waiting for the socket means NATS is not
keeping up: messages are then dropped and counted rather than queued without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from prometheus_client import Counter

from marketpipe.logs import get_logger
from marketpipe.ops.metrics import (
    NATS_CONNECTED,
    NATS_RECONNECTS,
    PUBLISH_ERRORS,
    PUBLISHED_MESSAGES,
)

log = get_logger("marketpipe.transport.nats")

MessageHandler = Callable[[str, bytes], Awaitable[None]]

# nats-py buffers this much while reconnecting (a reconnect to another node takes milliseconds;
# 8 MB is ~0.4 s of the services' whole output).
RECONNECT_BUFFER_BYTES = 8 * 1024 * 1024
# Waiting for the socket while connected: ~0.2 s of the order book's whole output, enough for
# every book of a new leader's first round at once.
OUTGOING_LIMIT_BYTES = 64 * 1024 * 1024
_CRLF = b"\r\n"


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
        reconnect_wait: float = 0.5,
        drain_seconds: float = 5.0,
    ) -> None:
        self.urls = list(urls)
        self.prefix = subject_prefix
        self.name = name
        self._reconnect_wait = reconnect_wait
        self.drain_seconds = drain_seconds
        self._nc = Client()
        # per subject: the labelled counter (.labels() costs ~1 µs) and b"PUB <subject> "
        self._published: dict[str, tuple[Counter, bytes]] = {}

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload)

    @property
    def outgoing_bytes(self) -> int:
        """Bytes queued for nats-py's flusher, not yet handed to the socket."""
        return int(self._nc._pending_data_size)

    @property
    def connected_url(self) -> str | None:
        url = self._nc.connected_url
        return url.geturl() if url is not None else None

    async def connect(self) -> None:
        """Connect to any node, retrying forever (with backoff) until one answers."""
        delay = self._reconnect_wait
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
                    pending_size=RECONNECT_BUFFER_BYTES,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
            except (OSError, NatsError, TimeoutError) as exc:
                log.warning("nats connect failed; retrying", urls=self.urls, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._nc = Client()
                continue
            NATS_CONNECTED.set(1)
            log.info("nats connected", url=self.connected_url, max_payload=self.max_payload)
            return

    async def publish(self, subject: str, payload: bytes) -> None:
        """Publish ``payload`` on ``prefix + subject``; the channel label is its first token."""
        self.publish_now(subject, payload)

    def publish_now(self, subject: str, payload: bytes) -> None:
        """:meth:`publish` without awaiting: queued for nats-py's flusher, which sends it (in
        order with every other command) at the loop's next turn."""
        known = self._published.get(subject)
        if known is None:
            counter = PUBLISHED_MESSAGES.labels(subject.partition(".")[0])
            head = f"PUB {self.prefix}{subject} ".encode()
            known = self._published[subject] = (counter, head)
        nc = self._nc
        size = len(payload)
        if size > nc.max_payload:
            channel = subject.partition(".")[0]
            PUBLISH_ERRORS.labels(channel, "too_large").inc()
            error = PayloadTooLargeError(subject, size, nc.max_payload)
            log.error("publish rejected", subject=subject, size=size, error=str(error))
            raise error
        refused = self._refusal(size)
        if refused is not None:
            PUBLISH_ERRORS.labels(subject.partition(".")[0], refused).inc()
            log.warning("publish dropped", subject=subject, reason=refused)
            return
        # Three pieces, never joined: the socket write takes them as one writev (uvloop).
        line = b"%s%d\r\n" % (known[1], size)
        nc._pending += (line, payload, _CRLF)
        nc._pending_data_size += len(line) + size + 2
        if nc.is_connected and nc._flush_queue is not None and nc._flush_queue.empty():
            nc._flush_queue.put_nowait(asyncio.get_running_loop().create_future())
        known[0].inc()

    def send_queued(self) -> None:
        """Hand what is queued to the socket now rather than at the flusher's next turn, unless
        the socket is still busy with earlier bytes (then the flusher, which waits for it, does:
        a stalled server must not grow the socket's buffer without bound)."""
        nc = self._nc
        writer = getattr(nc._transport, "_io_writer", None)  # nats-py's TcpTransport
        if (
            nc.is_connected
            and nc._pending_data_size
            and writer is not None
            and not writer.transport.get_write_buffer_size()
        ):
            writer.writelines(nc._pending)
            nc._pending = []
            nc._pending_data_size = 0

    def _refusal(self, size: int) -> str | None:
        """Why a message of ``size`` bytes cannot be queued now (nats-py's own rules, and a
        bound while connected); None: it can."""
        nc = self._nc
        if nc.is_closed:
            return "ConnectionClosedError"
        if nc.is_draining_pubs:
            return "ConnectionDrainingError"
        limit = OUTGOING_LIMIT_BYTES if nc.is_connected else RECONNECT_BUFFER_BYTES
        if nc._pending_data_size + size > limit:
            return "OutboundBufferLimitError"
        return None

    async def subscribe(self, subject: str, handler: MessageHandler) -> Subscription:
        """Call ``handler(subject_without_prefix, data)`` for each message; returns the handle
        (``await sub.unsubscribe()``)."""
        cut = len(self.prefix)

        async def deliver(msg: Msg) -> None:
            await handler(msg.subject[cut:], msg.data)

        return await self._nc.subscribe(self.prefix + subject, cb=deliver)

    async def flush(self) -> None:
        """Wait until the server has everything published so far."""
        await self._nc.flush()

    async def drain(self) -> None:
        """Send what is buffered, finish subscriptions, close. Never raises."""
        if self._nc.is_closed:
            return
        try:
            async with asyncio.timeout(self.drain_seconds):
                if self._nc.is_connected:
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
        NATS_CONNECTED.set(0)
        log.warning("nats disconnected")

    async def _on_reconnected(self) -> None:
        NATS_CONNECTED.set(1)
        NATS_RECONNECTS.inc()
        log.info("nats reconnected", url=self.connected_url)


async def connect(
    urls: Sequence[str], subject_prefix: str = "", name: str = "marketpipe"
) -> NatsClient:
    """A connected :class:`NatsClient` (convenience for tools and tests)."""
    client = NatsClient(urls, subject_prefix, name)
    await client.connect()
    return client

"""The gateway's I/O shell: aiohttp WebSocket endpoint, NATS subscriptions, Redis reads.

Everything that decides lives in the pure modules (``session``, ``hub``, ``send_queue``); this
module moves bytes between them and the sockets:

- ``/ws`` and ``/`` (with an Upgrade header) speak DESIGN §4; a plain GET ``/`` serves the page.
- One NATS subscription per wanted topic, opened on the first client's interest and closed
  after the last one leaves.
- A frame for a client that keeps up is written at once: frames delivered during one turn of
  the event loop are gathered per client and written with one ``writelines`` (one system call)
  when the turn's fan-out is done, with no task switch per client.
- A client whose socket does not keep up (its transport holds more than ``DIRECT_WRITE_LIMIT``
  unsent bytes) gets its frames through its bounded, conflating send queue and its own writer
  task, so a slow socket stalls only that writer; a client whose backlog passes the bound is
  closed with 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from marketpipe.config import Settings
from marketpipe.gateway.admission import SUBPROTOCOL, Admission, Refusal
from marketpipe.gateway.hub import Hub
from marketpipe.gateway.protocol import (
    MARKETS_SNAPSHOT,
    Conflation,
    SymbolCheck,
    data_frame,
    frame_prefix,
    json_array,
    json_object_from_pairs,
)
from marketpipe.gateway.send_queue import Pushed, SendQueue
from marketpipe.gateway.session import CLOSE_TRY_AGAIN_LATER, ClientSession, Limits, Outcome
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import (
    BAD_INPUT,
    GATEWAY_CONNECTIONS,
    GATEWAY_DISCONNECTS,
    GATEWAY_DROPPED,
    GATEWAY_SUBSCRIPTIONS,
)
from marketpipe.transport.nats import NatsClient
from marketpipe.transport.redis_cache import (
    MARKETS_HASH,
    RedisCache,
    orderbook_key,
    ticker_key,
    trades_key,
)

log = get_logger("marketpipe.gateway")

STATIC_DIR = Path(__file__).parent / "static"
CLOSE_GOING_AWAY = 1001
# a message between max_message_bytes and this gets an error reply; beyond it aiohttp closes
# the connection (1009) without reading the message into memory
HARD_MESSAGE_CAP = 64 * 1024
# how long a close handshake with a stuck client may take before the socket is cut
CLOSE_TIMEOUT = 1.0

# unsent bytes a client's transport may hold before its frames wait in its send queue
DIRECT_WRITE_LIMIT = 64 * 1024

_DROPPED_CONFLATED = GATEWAY_DROPPED.labels("conflated")
_DROPPED_SLOW = GATEWAY_DROPPED.labels("slow_client")
_REFUSALS_COUNTED = {
    Refusal.FULL: GATEWAY_DISCONNECTS.labels("connection_limit"),
    Refusal.BAD_TOKEN: BAD_INPUT.labels("gateway", "bad_token"),
    Refusal.BAD_ORIGIN: BAD_INPUT.labels("gateway", "bad_origin"),
    Refusal.NO_ORIGIN: BAD_INPUT.labels("gateway", "no_origin"),
}


_TEXT_FIN = 0x81
_HEADER_SHORT = struct.Struct("!BB").pack
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack


def text_frame_header(length: int) -> bytes:
    """RFC 6455 header of a final, unmasked, uncompressed text frame of ``length`` bytes."""
    if length < 126:
        return _HEADER_SHORT(_TEXT_FIN, length)
    if length < 65536:
        return _HEADER_16(_TEXT_FIN, 126, length)
    return _HEADER_64(_TEXT_FIN, 127, length)


class ClientConnection:
    """One WebSocket client: its session, its send queue and the task that writes it out."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        session: ClientSession,
        backlog: int,
        on_slow: Callable[[ClientConnection], None],
        on_pending: Callable[[ClientConnection], None],
    ) -> None:
        self.ws = ws
        self.request = request
        self.session = session
        self.queue = SendQueue(backlog)
        self._wake = asyncio.Event()
        self._on_slow = on_slow
        self._on_pending = on_pending
        self.writer: asyncio.Task[None] | None = None
        # frames to write when this turn of the loop is done (the direct path)
        self._pending: list[bytes] = []
        # the writer holds frames it took from the queue and has not written yet
        self._writing = False
        # compressed frames need aiohttp's compressor: always through the writer
        self._direct = not ws.compress
        self._transport = request.transport  # the same for the connection's life

    def deliver(self, topic: str | None, frame: bytes, how: Conflation = Conflation.NONE) -> None:
        if self._pending or (not self.queue and not self._writing and self._keeping_up()):
            if not self._pending:
                self._on_pending(self)
            self._pending.append(frame)
            return
        pushed = self.queue.push(frame, topic, how)
        if pushed is Pushed.QUEUED:
            self._wake.set()
        elif pushed is Pushed.CONFLATED:
            _DROPPED_CONFLATED.inc()
        elif pushed is Pushed.OVERFLOW:
            self._on_slow(self)

    def _keeping_up(self) -> bool:
        transport = self._transport
        return (
            self._direct
            and transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() <= DIRECT_WRITE_LIMIT
        )

    def flush(self) -> None:
        """Write the frames gathered this turn, in one system call."""
        frames, self._pending = self._pending, []
        transport = self._transport
        if self.ws.closed or transport is None or transport.is_closing():
            return  # closing: nothing may follow the close frame; the reader cleans up
        parts: list[bytes] = []
        for frame in frames:
            parts.append(text_frame_header(len(frame)))
            parts.append(frame)
        transport.writelines(parts)

    async def write_forever(self) -> None:
        ws = self.ws
        text = WSMsgType.TEXT
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._writing = True
                for frame in self.queue.take_all():
                    await ws.send_frame(frame, text)
                self._writing = False
        except (ConnectionError, RuntimeError) as exc:
            # the peer went away mid-write; the reader side notices and cleans up
            log.debug("client write failed", error=repr(exc))

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``; a client that does not take the close frame in time is cut."""
        if self.writer is not None:
            self.writer.cancel()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code=code, message=reason.encode())
        except (TimeoutError, ConnectionError):
            if self.request.transport is not None:
                self.request.transport.abort()


class Gateway:
    """The gateway's routes and fan-out; ``start``/``stop`` follow the service lifecycle."""

    def __init__(
        self,
        settings: Settings,
        nats: NatsClient,
        cache: RedisCache | None,
        known_symbol: SymbolCheck,
    ) -> None:
        self.settings = settings
        self.nats = nats
        self.cache = cache
        self.known_symbol = known_symbol
        self.hub = Hub()
        self.limits = Limits(
            max_topics=settings.gateway_max_topics,
            max_message_bytes=settings.gateway_max_message_bytes,
            messages_per_second=settings.gateway_max_messages_per_second,
        )
        self.clients: set[ClientConnection] = set()
        self._upstream: dict[str, Any] = {}  # topic -> NATS subscription
        self._syncing: asyncio.Task[None] | None = None  # the task following the hub's interest
        self._closers: set[asyncio.Task[None]] = set()
        self._unflushed: list[ClientConnection] = []  # clients with frames gathered this turn
        # refuses everyone until start(): NATS must be connected first
        self.admission = Admission(
            settings.gateway_max_connections,
            settings.gateway_auth_tokens,
            settings.gateway_allowed_origins,
        )

    # --- routes ---

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ws", self.handle_websocket)
        app.router.add_get("/", self.handle_root)
        app.router.add_static("/static/", STATIC_DIR, name="static")

    async def handle_root(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.handle_websocket(request)
        return web.FileResponse(STATIC_DIR / "index.html")

    async def handle_websocket(self, request: web.Request) -> web.StreamResponse:
        headers = request.headers
        refusal = self.admission.admit(
            headers.get("Authorization"),
            headers.get("Sec-WebSocket-Protocol"),
            headers.get("Origin"),
        )
        if refusal is not None:
            counter = _REFUSALS_COUNTED.get(refusal)
            if counter is not None:
                counter.inc()
            challenge = {"WWW-Authenticate": "Bearer"} if refusal is Refusal.BAD_TOKEN else None
            return web.Response(status=refusal.status, text=refusal.text + "\n", headers=challenge)
        try:  # the place taken by admit() is given back however this ends
            return await self._serve_client(request)
        finally:
            self.admission.places.give_back()

    async def _serve_client(self, request: web.Request) -> web.WebSocketResponse:
        settings = self.settings
        ws = web.WebSocketResponse(
            heartbeat=settings.gateway_ping_seconds,
            compress=settings.gateway_compression,
            max_msg_size=max(HARD_MESSAGE_CAP, 2 * settings.gateway_max_message_bytes),
            decode_text=False,
            protocols=(SUBPROTOCOL,),
        )
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        session = ClientSession(self.limits, self.known_symbol, loop.time())
        client = ClientConnection(
            ws, request, session, settings.gateway_max_backlog, self._cut_slow, self._gathering
        )
        client.writer = asyncio.create_task(client.write_forever(), name="gateway-client-writer")
        self.clients.add(client)
        GATEWAY_CONNECTIONS.set(len(self.clients))
        try:
            await self._read_forever(client)
        finally:
            self.clients.discard(client)
            GATEWAY_CONNECTIONS.set(len(self.clients))
            await self._leave_all(client)
            client.writer.cancel()
        return ws

    async def _read_forever(self, client: ClientConnection) -> None:
        ws, session = client.ws, client.session
        loop = asyncio.get_running_loop()
        idle = self.settings.gateway_idle_timeout_seconds
        while not ws.closed:
            try:
                # a client holding topics may stay silent forever; one holding none may not
                msg = await ws.receive(timeout=None if session.topics else idle)
            except TimeoutError:
                GATEWAY_DISCONNECTS.labels("idle").inc()
                await client.close(1000, "idle timeout")
                return
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                outcome = session.receive(msg.data, loop.time())
                await self._carry_out(client, outcome)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            elif msg.type is WSMsgType.ERROR:
                log.info("client connection error", error=repr(ws.exception()))
                return

    async def _carry_out(self, client: ClientConnection, outcome: Outcome) -> None:
        if outcome.bad_input is not None:
            BAD_INPUT.labels("gateway", outcome.bad_input).inc()
        if outcome.close_code is not None:
            GATEWAY_DISCONNECTS.labels(outcome.bad_input or "policy").inc()
            log.info("closing client", code=outcome.close_code, reason=outcome.close_reason)
            await client.close(outcome.close_code, outcome.close_reason)
            return
        for topic in outcome.left:
            client.queue.discard(topic)
            self.hub.remove(client, topic)
        for topic in outcome.joined:
            self.hub.join(client, topic)
        if outcome.joined or outcome.left:
            # upstream first: "subscribed" means live messages are already on their way
            await self._sync_upstream()
        if outcome.reply is not None:
            client.deliver(None, outcome.reply)
        # every joined topic is served before anything is awaited: nothing published after
        # the reply is missed
        uncached = [topic for topic in outcome.joined if self.hub.serve(client, topic)]
        for topic in uncached:
            await self._offer_cached(topic)
        for topic in outcome.once:
            await self._send_recent_trades(client, topic)

    async def _leave_all(self, client: ClientConnection) -> None:
        topics = tuple(client.session.topics)
        client.session.topics.clear()
        for topic in topics:
            self.hub.remove(client, topic)  # may already be gone: a slow client is cut first
        await self._sync_upstream()

    def _gathering(self, client: ClientConnection) -> None:
        """``client`` has frames to write: flush every such client once this turn is done."""
        if not self._unflushed:
            asyncio.get_running_loop().call_soon(self._flush)
        self._unflushed.append(client)

    def _flush(self) -> None:
        clients, self._unflushed = self._unflushed, []
        for client in clients:
            client.flush()

    def _cut_slow(self, client: ClientConnection) -> None:
        """Called from inside a fan-out: stop feeding the client now, close it soon after."""
        GATEWAY_DISCONNECTS.labels("slow").inc()
        _DROPPED_SLOW.inc(len(client.queue))
        for topic in client.session.topics:
            self.hub.remove(client, topic)  # upstream interest is closed by _leave_all
        task = asyncio.get_running_loop().create_task(
            client.close(CLOSE_TRY_AGAIN_LATER, "backlog too large")
        )
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)
        log.info("closing slow client", backlog=len(client.queue))

    # --- upstream ---

    async def _sync_upstream(self) -> None:
        """Return once the NATS subscriptions match the hub's wanted topics (and the server
        has confirmed the new ones). One task does the work; callers wait for it."""
        if self._syncing is None or self._syncing.done():
            self._syncing = asyncio.get_running_loop().create_task(
                self._follow_interest(), name="gateway-upstream"
            )
        # shielded: a client that goes away must not stop a change others wait for
        await asyncio.shield(self._syncing)

    async def _follow_interest(self) -> None:
        """Open or close one subscription per changed topic until no change is left: a change
        made while a subscription was being opened or closed is taken in the same run."""
        opened = False
        while True:
            topic = self.hub.take_changed()
            if topic is None:
                if not opened:
                    break
                opened = False
                try:
                    await self.nats.flush()  # the server has our interest once this returns
                except Exception as exc:  # NATS down: nats-py resubscribes on reconnect
                    log.warning("nats flush after subscribe failed", error=repr(exc))
                continue
            wanted = self.hub.wanted(topic)
            if wanted and topic not in self._upstream:
                subject = topic.replace("@", ".", 1)
                try:
                    self._upstream[topic] = await self.nats.subscribe(subject, self._on_nats)
                except Exception as exc:  # the NATS client is closed: only at shutdown
                    log.warning("nats subscribe failed", topic=topic, error=repr(exc))
                    self.hub.mark_changed(topic)  # the next change tries again
                    break
                opened = True
            elif not wanted and topic in self._upstream:
                # nats-py forgets the subscription before it awaits: nothing more is delivered
                with contextlib.suppress(Exception):
                    await self._upstream.pop(topic).unsubscribe()
            GATEWAY_SUBSCRIPTIONS.set(len(self._upstream))

    async def _on_nats(self, subject: str, payload: bytes) -> None:
        self.hub.publish(subject.replace(".", "@", 1), payload)

    async def _offer_cached(self, topic: str) -> None:
        if self.cache is None:
            return
        channel, _, symbol = topic.partition("@")
        if topic == MARKETS_SNAPSHOT:
            pairs = await self.cache.hgetall(MARKETS_HASH)
            value = json_object_from_pairs(pairs) if pairs else None
        elif channel == "orderbook":
            value = await self.cache.get_value(orderbook_key(symbol))
        else:
            value = await self.cache.get_value(ticker_key(symbol))
        if value is not None:
            self.hub.publish(topic, value, from_cache=True)

    async def _send_recent_trades(self, client: ClientConnection, topic: str) -> None:
        symbol = topic.partition("@")[2]
        trades = await self.cache.get_recent(trades_key(symbol)) if self.cache else []
        client.deliver(None, data_frame(frame_prefix(topic), json_array(trades)))

    # --- lifecycle ---

    def start(self) -> None:
        self.admission.serving = True

    def ready(self) -> bool:
        return self.admission.serving

    async def stop(self) -> None:
        """Refuse new clients, tell the connected ones we are going (1001), drop NATS interest."""
        self.admission.serving = False
        clients = list(self.clients)
        await asyncio.gather(
            *(c.close(CLOSE_GOING_AWAY, "server shutting down") for c in clients),
            return_exceptions=True,
        )
        if self._syncing is not None:
            self._syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncing
        for sub in self._upstream.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._upstream.clear()

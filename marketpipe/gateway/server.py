"""The gateway's I/O shell: aiohttp WebSocket endpoint, NATS subscriptions, Redis reads.

Everything that decides lives in the pure modules (``admission``, ``session``, ``hub``,
``send_queue``, ``ordering``); this module moves bytes between them and the sockets:

- ``/ws`` and ``/`` (with an Upgrade header) speak DESIGN §4; a plain GET ``/`` serves the page.
- One NATS subscription per wanted topic: one task opens and closes them as the hub's interest
  changes, and a client is told "subscribed" once its topics' subscriptions are in place.
- A frame for a client that keeps up is written at once: frames delivered during one turn of
  the event loop are gathered per client and written with one ``writelines`` (one system call)
  when the turn's fan-out is done, with no task switch per client. The fan-out hands every
  client the same frame object; nothing is copied or merged per client on its way.
- A client whose socket does not keep up (its transport holds more than ``DIRECT_WRITE_LIMIT``
  unsent bytes) is behind: its frames wait in its send queue (bounded in bytes, conflating)
  and its own writer task writes them one at a time as the socket takes them, so a slow socket
  stalls only that writer. Like the NATS server with its own slow consumers, the gateway cuts
  (1013) a client that holds more than ``GATEWAY_MAX_PENDING_BYTES`` unsent, or that has been
  behind for longer than ``GATEWAY_WRITE_DEADLINE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from marketpipe.config import Settings
from marketpipe.gateway.admission import SUBPROTOCOL, Admission, Refusal
from marketpipe.gateway.depth import BadDepthMessage
from marketpipe.gateway.hub import Hub
from marketpipe.gateway.protocol import (
    DEPTH_CHANNEL,
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

# a depth@ chain waits this long for a full view from NATS before it takes Redis's
DEPTH_CACHE_AFTER_SECONDS = 0.3

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


# SO_LINGER on, 0 s: closing the socket resets the connection and drops what it holds
_LINGER_NONE = struct.pack("ii", 1, 0)

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


class _Subscriptions:
    """Several NATS subscriptions that one topic holds (``depth@``), closed together."""

    def __init__(self, *subscriptions: Any) -> None:
        self._subscriptions = subscriptions

    async def unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()


class ClientConnection:
    """One WebSocket client: its session, its send queue, the task that writes it out, and
    since when it has been behind."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        session: ClientSession,
        *,
        max_pending_bytes: int,
        write_deadline: float,
        on_slow: Callable[[ClientConnection, str], None],
        on_pending: Callable[[ClientConnection], None],
        take_latest: Callable[[ClientConnection, str], bytes | None],
    ) -> None:
        self.ws = ws
        self.request = request
        self.session = session
        self.queue = SendQueue(max_pending_bytes)
        self.cut = False  # judged slow: nothing more is written
        self.writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._on_slow = on_slow
        self._on_pending = on_pending
        self._take_latest = take_latest
        self._write_deadline = write_deadline
        # frames to write when this turn of the loop is done (the direct path), their bytes,
        # and how many bytes they may take before the client holds more than its bound
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._room = 0
        # the writer holds a frame it took from the queue and has not written yet
        self._writing = False
        # set while the client is behind; runs out at the write deadline
        self._behind: asyncio.TimerHandle | None = None
        # compressed frames need aiohttp's compressor: always through the writer
        self._direct = not ws.compress
        self._transport = request.transport  # the same for the connection's life
        if self._transport is not None:
            # aiohttp's writer waits (send_frame) exactly while the socket holds more than the
            # direct path allows
            self._transport.set_write_buffer_limits(high=DIRECT_WRITE_LIMIT)

    def deliver(self, topic: str | None, frame: bytes, how: Conflation = Conflation.NONE) -> bool:
        """Write ``frame`` now or queue it. True: the client is behind and, for this latest-value
        topic, holds a place instead, to take the topic's newest frame when its writer gets
        there (the hub skips it until then)."""
        if self.cut:
            return False
        if self._pending:
            if self._pending_bytes > self._room:
                self._on_slow(self, "pending_bytes")
                return False
            self._pending.append(frame)
            self._pending_bytes += len(frame)
            return False
        if not self.queue and not self._writing and self._direct and self._socket_keeps_up():
            self._caught_up()
            transport = self._transport
            assert transport is not None  # checked by _socket_keeps_up
            self._room = self.queue.max_bytes - transport.get_write_buffer_size()
            self._on_pending(self)
            self._pending.append(frame)
            self._pending_bytes = len(frame)
            return False
        # O(1) and as little as possible: 2000 stalled clients may take each frame too
        socket_held = self._socket_held()
        behind = socket_held > DIRECT_WRITE_LIMIT
        if behind and self._behind is None:
            self._fall_behind()
        # a depth@ client behind holds a place too: it takes a fresh snapshot there (DESIGN §10)
        holds = how is Conflation.REPLACE or how is Conflation.SNAPSHOT
        if behind and holds and topic is not None:
            pushed = self.queue.hold(topic, len(frame), socket_held)
        else:
            pushed = self.queue.push(frame, topic, how, socket_held)
        if pushed is Pushed.OVERFLOW:
            self._on_slow(self, "pending_bytes")
            return False
        if pushed is Pushed.QUEUED:
            self._wake.set()
        if pushed is Pushed.REFUSED:
            return False
        # a depth@ frame that found an older one unsent made that place a held one
        return (behind and holds) or (how is Conflation.SNAPSHOT and pushed is Pushed.CONFLATED)

    def count_conflated(self) -> None:
        """Add the frames conflated away since last time to the metric."""
        if self.queue.conflated:
            _DROPPED_CONFLATED.inc(self.queue.conflated)
            self.queue.conflated = 0

    @property
    def held_bytes(self) -> int:
        """What the gateway holds for this client and has not handed to the kernel yet."""
        return self.queue.bytes + self._pending_bytes + self._socket_held()

    def _socket_held(self) -> int:
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def _socket_keeps_up(self) -> bool:
        transport = self._transport
        return (
            transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() <= DIRECT_WRITE_LIMIT
        )

    def _fall_behind(self) -> None:
        if self._behind is None:
            self._behind = asyncio.get_running_loop().call_later(
                self._write_deadline, self._deadline_passed
            )

    def _caught_up(self) -> None:
        if self._behind is not None:
            self._behind.cancel()
            self._behind = None

    def _deadline_passed(self) -> None:
        self._behind = None
        if self.queue or self._writing or not self._socket_keeps_up():
            self._on_slow(self, "write_deadline")

    def stop_writing(self) -> int:
        """Cut: drop what waits (nothing of it will be sent), stop the clock; returns how many
        frames were dropped."""
        self.cut = True
        dropped = len(self.queue) + len(self._pending)
        self.count_conflated()
        self.queue.clear()  # the writer finds nothing more: it goes back to sleep
        self._pending = []
        self._pending_bytes = 0
        self._caught_up()
        return dropped

    def flush(self) -> None:
        """Write the frames gathered this turn, in one system call."""
        frames, self._pending = self._pending, []
        self._pending_bytes = 0
        transport = self._transport
        if self.cut or self.ws.closed or transport is None or transport.is_closing():
            return  # closing: nothing may follow the close frame; the reader cleans up
        parts: list[bytes] = []
        for frame in frames:
            parts.append(text_frame_header(len(frame)))
            parts.append(frame)
        transport.writelines(parts)
        if transport.get_write_buffer_size() > DIRECT_WRITE_LIMIT:
            self._fall_behind()

    async def write_forever(self) -> None:
        ws = self.ws
        text = WSMsgType.TEXT
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._writing = True
                # one frame at a time: what waits meanwhile keeps conflating in the queue
                while (taken := self.queue.pop()) is not None:
                    topic, frame = taken
                    if frame is None:  # a held place: the topic's newest frame, now
                        assert topic is not None  # only latest-value topics hold places
                        frame = self._take_latest(self, topic)
                        if frame is None:
                            continue  # it left the topic meanwhile
                    await ws.send_frame(frame, text)  # waits while the socket is full
                self._writing = False
                self.count_conflated()
                if self._socket_keeps_up():
                    self._caught_up()
        except (ConnectionError, RuntimeError) as exc:
            # the peer went away mid-write; the reader side notices and cleans up
            log.debug("client write failed", error=repr(exc))

    async def close(self, code: int, reason: str, patience: float = CLOSE_TIMEOUT) -> None:
        """Close with ``code``; a client that does not take the close frame within ``patience``
        seconds is cut off.

        The writer is not cancelled here: it may be waiting for the socket to drain, and
        cancelling it would cancel the one drain future aiohttp shares with the close frame.
        Once the close frame is queued its next write fails and it ends; the connection's
        handler cancels it when everything is over."""
        self._caught_up()
        try:
            async with asyncio.timeout(patience):
                await self.ws.close(code=code, message=reason.encode())
        except (TimeoutError, ConnectionError):
            self._abort()
        except asyncio.CancelledError:
            # aiohttp cancels a ping that waits for the socket, and with it the drain future
            # the close frame waits on: the close failed, it was not this task's cancellation
            self._abort()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise

    def let_go(self, patience: float) -> None:
        """The connection is over for the gateway: what its socket still holds may leave within
        ``patience`` seconds, then the socket goes (a graceful close of a socket its peer never
        reads would wait forever, holding all of it)."""
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(patience, self._abort)

    def _abort(self) -> None:
        """Drop the connection and everything it holds, the kernel's part too: a plain close
        would leave the socket to the kernel, still trying to send to a peer that never reads."""
        transport = self._transport
        if transport is None or not transport.get_write_buffer_size():
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NONE)
        transport.abort()  # and, with no linger, a reset for the peer


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
            # every frame from the writer waits while the socket is full (see ClientConnection)
            writer_limit=0,
        )
        send_buffer = settings.gateway_socket_send_buffer_bytes
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if send_buffer and sock is not None:
            # what a stalled client costs the kernel, and what the fan-out copies into it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        session = ClientSession(self.limits, self.known_symbol, loop.time())
        client = ClientConnection(
            ws,
            request,
            session,
            max_pending_bytes=settings.gateway_max_pending_bytes,
            write_deadline=settings.gateway_write_deadline_seconds,
            on_slow=self._cut_slow,
            on_pending=self._gathering,
            take_latest=self.hub.unpark,
        )
        client.writer = asyncio.create_task(client.write_forever(), name="gateway-client-writer")
        self.clients.add(client)
        GATEWAY_CONNECTIONS.set(len(self.clients))
        try:
            await self._read_forever(client)
        finally:
            self.clients.discard(client)
            GATEWAY_CONNECTIONS.set(len(self.clients))
            client.count_conflated()
            client.let_go(settings.gateway_write_deadline_seconds)
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
        if client.cut:
            return  # judged slow: its topics are gone and it is being closed
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

    def _cut_slow(self, client: ClientConnection, limit: str) -> None:
        """The client holds more than its bound, or has been behind past the write deadline.
        Possibly called from inside a fan-out: stop feeding it now, close it soon after."""
        if client.cut:
            return
        GATEWAY_DISCONNECTS.labels("slow").inc()
        held = client.held_bytes
        dropped = client.stop_writing() + (limit == "pending_bytes")  # and the refused frame
        _DROPPED_SLOW.inc(dropped)
        for topic in client.session.topics:
            self.hub.remove(client, topic)  # upstream interest is closed by _leave_all
        # the close frame waits behind what the socket holds: as long as any write may wait
        task = asyncio.get_running_loop().create_task(
            client.close(
                CLOSE_TRY_AGAIN_LATER,
                "too slow: " + limit.replace("_", " "),
                patience=self.settings.gateway_write_deadline_seconds,
            )
        )
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)
        log.info("closing slow client", limit=limit, held_bytes=held, dropped_frames=dropped)

    # --- upstream ---

    async def _sync_upstream(self) -> None:
        """Return once the NATS subscriptions match the hub's wanted topics (and the server
        has confirmed the new ones). One task does the work; callers wait for it."""
        if self._syncing is None or self._syncing.done():
            if not self.hub.has_changes:
                return  # every wanted topic is subscribed and confirmed already
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
                    if topic.startswith(DEPTH_CHANNEL + "@"):
                        self._upstream[topic] = await self._subscribe_depth(topic)
                    else:
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

    async def _subscribe_depth(self, topic: str) -> _Subscriptions:
        """``depth@S``: the deltas, and the full views a chain starts from (DESIGN §10)."""
        symbol = topic.partition("@")[2]

        async def on_view(_subject: str, payload: bytes) -> None:
            self._depth(topic, payload, is_delta=False)

        async def on_delta(_subject: str, payload: bytes) -> None:
            self._depth(topic, payload, is_delta=True)

        return _Subscriptions(
            await self.nats.subscribe(f"delta.orderbook.{symbol}", on_delta),
            await self.nats.subscribe(f"orderbook.{symbol}", on_view),
        )

    def _depth(self, topic: str, payload: bytes, is_delta: bool) -> None:
        try:
            self.hub.publish_depth(topic, payload, is_delta)
        except BadDepthMessage as exc:
            BAD_INPUT.labels("gateway", "bad_book").inc()
            log.warning("bad book message", error=str(exc))

    async def _offer_cached(self, topic: str) -> None:
        if self.cache is None:
            return
        channel, _, symbol = topic.partition("@")
        if channel == DEPTH_CHANNEL:
            task = asyncio.get_running_loop().create_task(self._offer_cached_depth(topic, symbol))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)
            return
        if topic == MARKETS_SNAPSHOT:
            pairs = await self.cache.hgetall(MARKETS_HASH)
            value = json_object_from_pairs(pairs) if pairs else None
        elif channel == "orderbook":
            value = await self.cache.get_value(orderbook_key(symbol))
        else:
            value = await self.cache.get_value(ticker_key(symbol))
        if value is not None:
            self.hub.publish(topic, value, from_cache=True)

    async def _offer_cached_depth(self, topic: str, symbol: str) -> None:
        """A ``depth@`` chain starts from Redis only for a quiet pair: the cached book is up to
        the orderbook's cache period old, and the deltas since then are gone, so a busy pair
        starts from its next full view on NATS instead (one interval away)."""
        await asyncio.sleep(DEPTH_CACHE_AFTER_SECONDS)
        if self.cache is None or not self.hub.depth_waiting(topic):
            return
        value = await self.cache.get_value(orderbook_key(symbol))
        if value is not None:
            self._depth(topic, value, is_delta=False)

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

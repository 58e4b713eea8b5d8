"""The simulator's stream connections (``/ws``, ``/stream``) and the clock that feeds them.

One clock task steps every symbol (a slice at a time, so the load is smooth); each event is
encoded once and the same bytes go to every subscriber through a per-connection queue, framed
once for raw subscribers and once per name a combined subscriber used.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from marketpipe.logs import get_logger
from marketpipe.ops.metrics import BAD_INPUT
from marketpipe.simulator.faults import Fault
from marketpipe.simulator.history import KLINE_INTERVALS, avg_price_event, kline_event
from marketpipe.simulator.market import Diff, SymbolMarket, encode_agg_trade, encode_trade
from marketpipe.simulator.params import ApiError
from marketpipe.simulator.protocol import (
    ALL_MINI_TICKERS,
    ControlSession,
    InvalidStream,
    MessageRate,
    PeriodicStream,
    canonical_stream,
    periodic_stream,
    query_streams,
    stream_names,
    text_frame_header,
    url_streams,
)
from marketpipe.simulator.state import Exchange, SimConfig, now_ms

log = get_logger("marketpipe.simulator")

# The clock steps a fiftieth of the symbols at a time (40 every 2 ms at 2000 x 10/s), each event
# stamped when it is made: it leaves about a millisecond after its E, as an exchange's would.
# A tenth at a time, E was the slice's start and events left ~5 ms later, after the whole slice.
SLICES = 50
MAX_QUEUE = 10_000  # frames queued for one connection before it is closed as too slow
MAX_WRITE_BUFFER = 64 * 1024 * 1024  # bytes unsent to one client before it is closed as too slow


class Connection:
    """One WebSocket client: its control session, send queue and liveness."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        peer: str,
        session: ControlSession,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.peer = peer
        self.session = session
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.silent = False
        self.muted: set[str] = set()  # streams (as fed) not sent to this connection (a fault)
        self.opened = time.monotonic()
        self.last_pong = self.opened
        self.ping_payload = b""
        self.rate = MessageRate()
        self.serial = 0  # 1, 2, ... in order of opening, so tests can count connections

    def push(self, payload: bytes) -> None:
        """Queue one text message (a reply, an injected event)."""
        self.push_frame(text_frame_header(len(payload)) + payload)

    def push_frame(self, frame: bytes) -> None:
        """Queue a framed message (a stream event, framed once for all its subscribers)."""
        if self.silent or self.ws.closed:
            return
        self.queue.append(frame)
        if len(self.queue) > MAX_QUEUE:
            self.queue.clear()
            asyncio.get_running_loop().create_task(self.close(1008, "Too slow"))
        self.wake.set()

    async def writer(self) -> None:
        """Write everything queued in one go: one syscall per wake-up instead of one per frame
        (the fan-out's main cost). Frames are framed by us, not by aiohttp's writer: an
        unmasked, uncompressed text frame is a 2-10 byte header and the payload."""
        transport = self.transport
        while not self.ws.closed and transport is not None and not transport.is_closing():
            await self.wake.wait()
            self.wake.clear()
            if not self.queue or self.ws.closed:
                continue
            data = b"".join(self.queue)
            self.queue.clear()
            transport.write(data)
            if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                await self.close(1008, "Too slow")

    async def close(self, code: int, message: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=message.encode())

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class StreamHub:
    """The stream side of the exchange: connections, their subscriptions, the clock."""

    def __init__(self, config: SimConfig, exchange: Exchange) -> None:
        self.config = config
        self.exchange = exchange
        self.paused = config.paused
        # stream as fed (``canonical_stream``) -> subscriber -> the names it subscribed it as
        self.streams: dict[str, dict[Connection, list[str]]] = {}
        self.periodic: dict[str, PeriodicStream] = {}  # subscribed @kline_.. and @avgPrice
        self.kline_opens: dict[str, int] = {}  # kline stream -> open time of the kline last sent
        self.connections: set[Connection] = set()
        self.names: dict[str, dict[str, str]] = {}
        self.stream_prefix: dict[str, bytes] = {}  # name -> b'{"stream":"<name>","data":'
        self.held: dict[str, bytes] = {}  # a diff kept back by a reorder fault
        self.depth_1s: dict[str, Diff] = {}  # symbol -> this second's changes, for @depth
        self.ticks = 0
        self.opened_connections = 0
        self._tasks: list[asyncio.Task[None]] = []

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/ws", self.ws_raw),
            web.get("/ws/{streams:.*}", self.ws_raw),
            web.get("/stream", self.ws_combined),
        ]

    async def start(self, app: web.Application) -> None:
        self._tasks = [asyncio.create_task(self.clock()), asyncio.create_task(self.every_second())]

    async def stop(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for conn in list(self.connections):
            await conn.close(1001, "Server stopping")

    # -- the clock -------------------------------------------------------------------------------

    def symbol_streams(self, symbol: str) -> dict[str, str]:
        names = self.names.get(symbol)
        if names is None:
            names = self.names[symbol] = stream_names(symbol)
        return names

    def step_symbol(self, sym: SymbolMarket, now: int) -> None:
        if sym.status != "TRADING":
            return
        names = self.symbol_streams(sym.symbol)
        streams = self.streams
        fast = streams.get(names["depth@100ms"])
        slow = streams.get(names["depth"])
        result = sym.step(now, want_diff=bool(fast or slow))
        diff = result.diff
        if diff is not None:
            if slow:
                pending = self.depth_1s.get(sym.symbol)
                if pending is None:  # each step makes a fresh Diff: later ones merge into it
                    self.depth_1s[sym.symbol] = diff
                else:
                    pending.merge(diff)
            if fast:
                self.send_diff(sym.symbol, names["depth@100ms"], sym.encode_diff(diff, now))
        if result.trades:
            for kind, encode in (("trade", encode_trade), ("aggTrade", encode_agg_trade)):
                if streams.get(names[kind]):
                    for trade in result.trades:
                        self.publish(names[kind], encode(sym.symbol, trade, now))
        if result.top_changed and streams.get(names["bookTicker"]):
            self.publish(names["bookTicker"], sym.encode_book_ticker())

    def send_diff(self, symbol: str, stream: str, payload: bytes) -> None:
        action = self.exchange.faults.on_diff(symbol)
        if action == "drop":
            return
        if action == "reorder" and symbol not in self.held:
            self.held[symbol] = payload
            return
        self.publish(stream, payload)
        if action == "duplicate":
            self.publish(stream, payload)
        held = self.held.pop(symbol, None)
        if held is not None:
            self.publish(stream, held)

    def publish(self, stream: str, payload: bytes) -> None:
        """Send an event to every subscriber, framed once as a raw message and once per name it
        was subscribed as for combined-stream subscribers (which get it wrapped in that name)."""
        subscribers = self.streams.get(stream)
        if not subscribers:
            return
        raw = b""
        wrapped: dict[str, bytes] | None = None
        for conn, names in subscribers.items():
            if conn.muted and stream in conn.muted:
                continue
            if conn.session.combined:
                if wrapped is None:
                    wrapped = {}
                for name in names:
                    frame = wrapped.get(name)
                    if frame is None:
                        frame = wrapped[name] = self._wrap(name, payload)
                    conn.push_frame(frame)
            else:
                if not raw:
                    raw = text_frame_header(len(payload)) + payload
                conn.push_frame(raw)
                for _ in names[1:]:  # subscribed under two names (ethusdt@depth@1000ms too)
                    conn.push_frame(raw)

    def _wrap(self, name: str, payload: bytes) -> bytes:
        prefix = self.stream_prefix.get(name)
        if prefix is None:
            prefix = self.stream_prefix[name] = b'{"stream":"%s","data":' % name.encode()
        message = prefix + payload + b"}"
        return text_frame_header(len(message)) + message

    def step_all(self, ticks: int = 1) -> None:
        """Advance every symbol ``ticks`` diff intervals at once (manual clock)."""
        for _ in range(ticks):
            now = now_ms()
            for sym in list(self.exchange.market.symbols.values()):
                self.step_symbol(sym, now)
            self.ticks += 1

    async def clock(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.config.rate / SLICES
        deadline = loop.time()
        part = 0
        source = self.exchange.source
        while True:
            if source is not None and not self.paused:
                for symbol, stream, payload in source.due(loop.time()):
                    if stream.endswith("@depth@100ms"):
                        self.send_diff(symbol, stream, payload)  # faults apply as to our own
                    else:
                        self.publish(stream, payload)
            elif not self.paused:
                symbols = list(self.exchange.market.symbols.values())
                for sym in symbols[part::SLICES]:
                    self.step_symbol(sym, now_ms())
                part = (part + 1) % SLICES
                if part == 0:
                    self.ticks += 1
            deadline += interval
            delay = deadline - loop.time()
            if delay < -1.0:  # far behind (e.g. the process was paused): do not burst
                deadline = loop.time()
            await asyncio.sleep(max(0.0, delay))

    async def every_second(self) -> None:
        """1000 ms streams: @depth, @ticker, @miniTicker, !miniTicker@arr, @avgPrice, klines,
        once at each whole second. (Sleeping to the next whole second from the time of waking
        flushed twice when the sleep ended a millisecond early.)"""
        second = math.floor(time.time())
        while True:
            second = max(second + 1, math.floor(time.time()))  # behind by seconds: no burst
            await asyncio.sleep(max(0.0, second - time.time()))
            self.flush_second(now_ms())

    def flush_second(self, now: int) -> None:
        streams = self.streams
        for symbol, diff in self.depth_1s.items():
            sym = self.exchange.market.symbols.get(symbol)
            if sym is not None:
                payload = sym.encode_diff(diff, now)
                self.send_diff(symbol, self.symbol_streams(symbol)["depth"], payload)
        self.depth_1s.clear()
        want_all = bool(streams.get(ALL_MINI_TICKERS))
        changed = []
        for sym in self.exchange.market.trading():
            names = self.symbol_streams(sym.symbol)
            if streams.get(names["ticker"]):
                self.publish(names["ticker"], orjson.dumps(sym.ticker(now)))
            if streams.get(names["miniTicker"]) or (want_all and sym.changed_since_ticker):
                mini = sym.mini_ticker(now)
                self.publish(names["miniTicker"], orjson.dumps(mini))
                if sym.changed_since_ticker:
                    changed.append(mini)
            sym.changed_since_ticker = False
        if want_all and changed:
            self.publish(ALL_MINI_TICKERS, orjson.dumps(changed))
        self.flush_periodic(now)

    def flush_periodic(self, now: int) -> None:
        """@avgPrice every second, @kline_<interval> every 2 s (1s: every second)."""
        second = (now + 500) // 1000  # the flush wakes a little before or after the second
        for stream, periodic in self.periodic.items():
            sym = self.exchange.market.symbols.get(periodic.symbol)
            if second % periodic.seconds or sym is None or sym.status != "TRADING":
                continue
            history = sym.history
            if periodic.interval is None:
                event = avg_price_event(sym.symbol, *history.avg_price(now), now)
                self.publish(stream, orjson.dumps(event))
                continue
            width = KLINE_INTERVALS[periodic.interval]
            previous = self.kline_opens.get(stream)
            for bar, closed in history.kline_update(width, now, previous, periodic.offset):
                event = kline_event(sym.symbol, periodic.interval, bar, closed, now)
                self.publish(stream, orjson.dumps(event))
                self.kline_opens[stream] = bar.open_time

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, conn: Connection, names: list[str]) -> None:
        for name in names:
            stream = canonical_stream(name)
            self.streams.setdefault(stream, {}).setdefault(conn, []).append(name)
            periodic = periodic_stream(stream)
            if periodic is not None:
                self.periodic[stream] = periodic

    def unsubscribe(self, conn: Connection, names: list[str]) -> None:
        for name in names:
            stream = canonical_stream(name)
            subscribers = self.streams.get(stream, {})
            aliases = subscribers.get(conn, [])
            if name in aliases:
                aliases.remove(name)
                conn.muted.discard(stream)  # subscribed again, it flows again
                if not aliases:
                    del subscribers[conn]
                if not subscribers:
                    del self.streams[stream]
                    self.periodic.pop(stream, None)
                    self.kline_opens.pop(stream, None)

    def matching(self, symbol: str | None) -> list[Connection]:
        if symbol is None:
            return list(self.connections)
        prefix = symbol.lower() + "@"
        return [
            c
            for c in self.connections
            if any(s.lower().startswith(prefix) for s in c.session.subscriptions)
        ]

    # -- WebSocket -----------------------------------------------------------------------------

    async def ws_raw(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_ws(request, url_streams(request.match_info.get("streams", "")))

    async def ws_combined(self, request: web.Request) -> web.StreamResponse:
        requested = query_streams(request.rel_url.raw_query_string)
        try:
            for name in requested:
                canonical_stream(name)
        except InvalidStream as exc:
            raise ApiError(400, -1100, f"Invalid stream name: {exc}") from None
        return await self._serve_ws(request, list(dict.fromkeys(requested)), combined=True)

    async def _serve_ws(
        self, request: web.Request, names: list[str], combined: bool = False
    ) -> web.StreamResponse:
        if len(names) > self.config.max_streams:
            raise ApiError(400, -1101, f"Too many streams: at most {self.config.max_streams}")
        ws = web.WebSocketResponse(autoping=False, max_msg_size=64 * 1024)
        await ws.prepare(request)
        session = ControlSession(dict.fromkeys(names), combined, self.config.max_streams)
        conn = Connection(ws, request.remote or "?", session, request.transport)
        conn.rate.limit = self.config.max_messages_per_second
        self.opened_connections += 1
        conn.serial = self.opened_connections
        self.connections.add(conn)
        self.subscribe(conn, names)
        tasks = [asyncio.create_task(conn.writer()), asyncio.create_task(self._keepalive(conn))]
        try:
            await self._receive(conn)
        finally:
            for task in tasks:
                task.cancel()
            self.unsubscribe(conn, list(conn.session.subscriptions))
            self.connections.discard(conn)
        return ws

    async def _receive(self, conn: Connection) -> None:
        ws = conn.ws
        async for msg in ws:
            if not conn.rate.allow(time.monotonic()):
                await conn.close(1008, "Too many requests")
                return
            if msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                if msg.data == conn.ping_payload:
                    conn.last_pong = time.monotonic()
            elif msg.type is WSMsgType.TEXT:
                result = conn.session.receive(msg.data)
                if result.failed:
                    BAD_INPUT.labels("simulator_ws", "control").inc()
                    log.info("bad_control_message", peer=conn.peer, reply=result.reply.decode())
                self.subscribe(conn, result.subscribe)
                self.unsubscribe(conn, result.unsubscribe)
                conn.push(result.reply)
            elif msg.type is WSMsgType.BINARY:
                BAD_INPUT.labels("simulator_ws", "binary").inc()
                conn.push(b'{"id":null,"error":{"code":3,"msg":"Invalid JSON: binary frame"}}')

    async def _keepalive(self, conn: Connection) -> None:
        config = self.config
        tick = min(config.ping_seconds, config.max_connection_age_seconds, 1.0)
        next_ping = conn.opened + config.ping_seconds
        while not conn.ws.closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - conn.opened >= config.max_connection_age_seconds:
                await conn.close(1000, "Connection max age reached")
                return
            if conn.silent:  # a silenced connection neither pings nor expects pongs
                conn.last_pong = now
            elif now - conn.last_pong > config.pong_timeout_seconds:
                await conn.close(1008, "Pong timeout")
                return
            if now >= next_ping and not conn.silent:
                next_ping = now + config.ping_seconds
                conn.ping_payload = str(now_ms()).encode()
                with contextlib.suppress(Exception):
                    await conn.ws.ping(conn.ping_payload)

    # -- connection faults -----------------------------------------------------------------------

    async def apply(self, fault: Fault) -> None:
        """Carry out a connection fault (``CONNECTION_FAULTS``) on the matching connections."""
        targets = self.matching(fault.symbol)
        if fault.type == "close":
            for conn in targets:
                if fault.abrupt:
                    conn.abort()
                else:
                    await conn.close(fault.code, "Closed by fault injection")
        elif fault.type == "silent":
            for conn in targets:
                conn.silent = True
                conn.queue.clear()
        elif fault.type == "mute_stream":
            for conn in targets:
                conn.muted |= self._to_mute(fault, conn)
        elif fault.type == "server_shutdown":
            event = orjson.dumps({"e": "serverShutdown", "E": now_ms()})
            wrapped = b'{"stream":"!serverShutdown","data":%s}' % event
            for conn in targets:
                conn.push(wrapped if conn.session.combined else event)
        elif fault.type == "malformed":
            for conn in targets:
                conn.push(self._malformed(fault, conn))

    def _to_mute(self, fault: Fault, conn: Connection) -> set[str]:
        """The fault's stream, or every stream of its symbol, that the connection subscribed to
        (one it subscribes later flows)."""
        prefix = (fault.symbol or "").lower() + "@"
        held = {
            canonical_stream(name)
            for name in conn.session.subscriptions
            if name.lower().startswith(prefix)
        }
        return held if fault.stream is None else held & {canonical_stream(fault.stream)}

    def _malformed(self, fault: Fault, conn: Connection) -> bytes:
        if fault.kind == "not_json":
            return b'{"e":"depthUpdate","E":'
        symbol = fault.symbol or next(iter(self.exchange.market.symbols))
        sym = self.exchange.market.symbols[symbol]
        body: dict[str, Any]
        if fault.kind == "wrong_types":
            body = {
                "e": "depthUpdate",
                "E": "soon",
                "s": symbol,
                "U": "x",
                "u": None,
                "b": {},
                "a": 7,
            }
        else:  # bad_sequence: a range that ends before it starts
            body = {
                "e": "depthUpdate",
                "E": now_ms(),
                "s": symbol,
                "U": sym.update_id + 10,
                "u": sym.update_id + 5,
                "b": [],
                "a": [],
            }
        payload = orjson.dumps(body)
        stream = f"{symbol.lower()}@depth@100ms"
        return (
            b'{"stream":"%s","data":%s}' % (stream.encode(), payload)
            if conn.session.combined
            else payload
        )

    def unsilence(self) -> None:
        """Lift the connection faults that last (``DELETE /admin/faults``): silence, muting."""
        for conn in self.connections:
            conn.silent = False
            conn.muted.clear()

    def describe(self) -> list[dict[str, Any]]:
        """The open connections, for ``GET /admin/connections``."""
        return [
            {
                "id": c.serial,
                "peer": c.peer,
                "streams": list(c.session.subscriptions),
                "combined": c.session.combined,
                "silent": c.silent,
                "muted": sorted(c.muted),
                "queued": len(c.queue),
            }
            for c in self.connections
        ]

"""The simulator's aiohttp shell: Binance REST and WebSocket streams, assets/settings, admin API.

It only moves bytes: the market, the stream protocol, the limits and the fault plans are pure
modules. One clock task steps every symbol (a slice at a time, so the load is smooth); each event
is encoded once and the same bytes go to every subscriber through a per-connection queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from prometheus_client import generate_latest

from marketpipe.exchange.weights import (
    EXCHANGE_INFO_WEIGHT,
    TRADES_WEIGHT,
    depth_weight,
    ticker_24hr_weight,
)
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import BAD_INPUT
from marketpipe.simulator.faults import Fault, FaultError, FaultPlan, parse_fault
from marketpipe.simulator.history import (
    AVG_PRICE_MINUTES,
    HOUR,
    KLINE_INTERVALS,
    avg_price_event,
    kline_event,
    kline_row,
    parse_time_zone,
    parse_window,
    window_ticker,
)
from marketpipe.simulator.market import (
    ALL_STATUSES,
    SCALE,
    Diff,
    FrozenBook,
    Market,
    SymbolMarket,
    SymbolSpec,
    encode_agg_trade,
    encode_trade,
    fmt,
    rest_agg_trade,
    rest_trade,
)
from marketpipe.simulator.protocol import (
    AGG_TRADES_WEIGHT,
    ALL_MINI_TICKERS,
    AVG_PRICE_WEIGHT,
    HISTORICAL_TRADES_WEIGHT,
    KLINES_WEIGHT,
    MAX_STREAMS,
    MAX_WINDOW_SYMBOLS,
    ControlSession,
    InvalidStream,
    MessageRate,
    PeriodicStream,
    WeightLimiter,
    canonical_stream,
    periodic_stream,
    query_streams,
    stream_names,
    text_frame_header,
    url_streams,
    window_ticker_weight,
)
from marketpipe.simulator.units import parse_units

log = get_logger("marketpipe.simulator")

# The clock steps a fiftieth of the symbols at a time (40 every 2 ms at 2000 x 10/s), each event
# stamped when it is made: it leaves about a millisecond after its E, as an exchange's would.
# A tenth at a time, E was the slice's start and events left ~5 ms later, after the whole slice.
SLICES = 50
MAX_QUEUE = 10_000  # frames queued for one connection before it is closed as too slow
MAX_WRITE_BUFFER = 64 * 1024 * 1024  # bytes unsent to one client before it is closed as too slow
_SYMBOL_PARAM = re.compile(r"^[A-Z0-9\-_.]{1,20}$")


@dataclass
class SimConfig:
    symbols: int = 20
    seed: int = 1
    rate: float = 10.0  # diffs per second per symbol
    levels: int = 2000  # target levels per side
    weight_limit: int = 6000
    ban_seconds: float = 120.0
    ping_seconds: float = 20.0
    pong_timeout_seconds: float = 60.0
    max_connection_age_seconds: float = 86_400.0
    max_streams: int = MAX_STREAMS
    max_messages_per_second: int = 5
    paused: bool = False
    faults: list[Fault] = field(default_factory=list)


def now_ms() -> int:
    return int(time.time() * 1000)


class ApiError(Exception):
    """A Binance-style error answer ``{"code", "msg"}``."""

    def __init__(
        self,
        status: int,
        code: int,
        msg: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,  # sent instead of {"code","msg"} (a garbage-reply fault)
    ):
        super().__init__(msg)
        self.status, self.code, self.msg, self.headers = status, code, msg, headers or {}
        self.body = body


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


class Simulator:
    """The exchange: market, clock, subscribers, limits, faults, served documents."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.market = Market.create(config.symbols, config.seed, config.levels, now_ms())
        self.faults = FaultPlan(seed=config.seed)
        for fault in config.faults:
            self._add_fault(fault)
        self.limiter = WeightLimiter(config.weight_limit, config.ban_seconds)
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
        self.frozen: dict[str | None, FrozenBook | None] = {}  # stale snapshots by symbol
        self.ticks = 0
        self.opened_connections = 0
        # Recent REST requests (time, path, query, status), so tests can see what a client sent.
        self.rest_log: deque[dict[str, Any]] = deque(maxlen=1000)
        self.assets_doc: tuple[int, bytes] | None = None
        self.settings_doc: tuple[int, bytes] = (
            200,
            orjson.dumps(
                {"DEFAULT": {"MaxSpreadPct": 35, "Depth": 250}, "BTCUSDT": {"MaxSpreadPct": 5}}
            ),
        )
        self._tasks: list[asyncio.Task[None]] = []

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
        action = self.faults.on_diff(symbol)
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
        wrapped: dict[str, bytes] = {}
        for conn, names in subscribers.items():
            if conn.session.combined:
                for name in names:
                    frame = wrapped.get(name)
                    if frame is None:
                        frame = wrapped[name] = self._wrap(name, payload)
                    conn.push_frame(frame)
            else:
                if not raw:
                    raw = text_frame_header(len(payload)) + payload
                for _ in names:
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
            for sym in list(self.market.symbols.values()):
                self.step_symbol(sym, now)
            self.ticks += 1

    async def clock(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.config.rate / SLICES
        deadline = loop.time()
        part = 0
        while True:
            if not self.paused:
                symbols = list(self.market.symbols.values())
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
        """1000 ms streams: @depth, @ticker, @miniTicker, !miniTicker@arr, @avgPrice, klines."""
        while True:
            await asyncio.sleep(1.0 - (time.time() % 1.0))
            self.flush_second(now_ms())

    def flush_second(self, now: int) -> None:
        streams = self.streams
        for symbol, diff in self.depth_1s.items():
            sym = self.market.symbols.get(symbol)
            if sym is not None:
                payload = sym.encode_diff(diff, now)
                self.send_diff(symbol, self.symbol_streams(symbol)["depth"], payload)
        self.depth_1s.clear()
        want_all = bool(streams.get(ALL_MINI_TICKERS))
        changed = []
        for sym in self.market.trading():
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
        second = now // 1000
        for stream, periodic in self.periodic.items():
            sym = self.market.symbols.get(periodic.symbol)
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

    # -- REST ------------------------------------------------------------------------------------

    def charge(self, request: web.Request, weight: int) -> None:
        fault = self.faults.on_rest(request.path)
        if fault is not None:
            raise _fault_error(fault)
        verdict = self.limiter.charge(request.remote or "?", weight, time.time())
        request["used_weight"] = verdict.used
        headers = {"Retry-After": str(verdict.retry_after)}
        if verdict.status == 429:
            msg = "Too much request weight used; current limit is %d request weight per 1 MINUTE."
            raise ApiError(429, -1003, msg % self.limiter.limit, headers)
        if verdict.status == 418:
            raise ApiError(418, -1003, "Way too much request weight used; IP banned.", headers)

    def symbol_param(self, request: web.Request, required: bool = True) -> SymbolMarket | None:
        raw = request.query.get("symbol")
        if raw is None or raw == "":
            if required:
                raise ApiError(
                    400,
                    -1102,
                    "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                )
            return None
        return self.lookup(raw)

    def lookup(self, raw: str) -> SymbolMarket:
        if not _SYMBOL_PARAM.match(raw):
            raise ApiError(
                400,
                -1100,
                "Illegal characters found in parameter 'symbol'; legal range is "
                "'^[A-Z0-9-_.]{1,20}$'.",
            )
        sym = self.market.symbols.get(raw)
        if sym is None:
            raise ApiError(400, -1121, "Invalid symbol.")
        return sym

    def symbols_param(self, request: web.Request) -> list[SymbolMarket] | None:
        raw = request.query.get("symbols")
        if raw is None:
            return None
        try:
            names = orjson.loads(raw)
        except orjson.JSONDecodeError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
            raise ApiError(
                400, -1100, "Illegal characters found in parameter 'symbols'; expected a JSON array"
            )
        if len(set(names)) < len(names):
            raise ApiError(400, -1151, "Symbol is present multiple times in the list.")
        return [self.lookup(n) for n in names]

    def chosen_symbols(
        self, request: web.Request
    ) -> tuple[SymbolMarket | None, list[SymbolMarket]]:
        """(``symbol``, or None and the ``symbols`` or else all of them, without those whose
        status differs from ``symbolStatus``); a single symbol of another status is -1220."""
        if "symbol" in request.query and "symbols" in request.query:
            raise ApiError(400, -1128, "Combination of optional parameters invalid.")
        one = self.symbol_param(request, required=False)
        if one is not None:
            self.status_param(request, one)
            return one, [one]
        many = self.symbols_param(request) or list(self.market.symbols.values())
        wanted = request.query.get("symbolStatus")
        return None, [s for s in many if wanted in (None, s.status)]

    @staticmethod
    def symbol_count(request: web.Request) -> int | None:
        """How many symbols a request names (for its weight): None for all."""
        if "symbol" in request.query:
            return 1
        with contextlib.suppress(orjson.JSONDecodeError, TypeError):
            names = orjson.loads(request.query.get("symbols", ""))
            if isinstance(names, list):
                return len(names)
        return None

    @staticmethod
    def check_params(request: web.Request, allowed: set[str]) -> None:
        for key in request.query:
            if key not in allowed:
                raise ApiError(400, -1103, "An unknown parameter was sent.")
            if len(request.query.getall(key)) > 1:
                raise ApiError(400, -1101, "Duplicate values for a parameter detected.")

    @staticmethod
    def long_param(request: web.Request, name: str) -> int | None:
        """An optional non-negative integer (an id or a time in ms)."""
        raw = request.query.get(name)
        if raw is None:
            return None
        if not raw.isdigit() or len(raw) > 19:
            raise ApiError(
                400,
                -1100,
                f"Illegal characters found in parameter '{name}'; "
                "legal range is '^[0-9]{1,19}$'.",
            )
        return int(raw)

    @staticmethod
    def int_param(request: web.Request, name: str, default: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or int(raw) < 1:
            raise ApiError(
                400,
                -1100,
                f"Illegal characters found in parameter '{name}'; "
                "legal range is '^[0-9]{1,20}$'.",
            )
        return int(raw)

    def status_param(self, request: web.Request, sym: SymbolMarket) -> None:
        wanted = request.query.get("symbolStatus")
        if wanted is not None and wanted != sym.status:
            raise ApiError(
                400, -1220, "The symbol's status does not match the requested symbolStatus."
            )

    async def depth(self, request: web.Request) -> web.Response:
        limit = min(5000, self._peek_limit(request, 100))
        self.charge(request, depth_weight(limit))
        self.check_params(request, {"symbol", "limit", "symbolStatus"})
        sym = self.symbol_param(request)
        assert sym is not None
        self.status_param(request, sym)
        limit = min(5000, self.int_param(request, "limit", 100))
        stale, slow = self.faults.on_snapshot(sym.symbol)
        book = sym.freeze()
        if stale is not None:
            book = self.frozen.get(sym.symbol) or self.frozen.get(None) or book
        if slow is not None:
            await asyncio.sleep(slow.seconds)
        return _json(book.depth(limit))

    @staticmethod
    def _peek_limit(request: web.Request, default: int) -> int:
        raw = request.query.get("limit", "")
        return int(raw) if raw.isdigit() else default

    async def exchange_info(self, request: web.Request) -> web.Response:
        self.charge(request, EXCHANGE_INFO_WEIGHT)
        self.check_params(
            request, {"symbol", "symbols", "permissions", "showPermissionSets", "symbolStatus"}
        )
        one = self.symbol_param(request, required=False)
        many = self.symbols_param(request)
        status = request.query.get("symbolStatus")
        if status is not None and (one is not None or many is not None):
            raise ApiError(400, -1128, "Combination of optional parameters invalid.")
        if status is not None and status not in ALL_STATUSES:
            raise ApiError(400, -1100, "Illegal characters found in parameter 'symbolStatus'.")
        if one is not None:
            chosen = [one]
        elif many is not None:
            chosen = many
        else:
            chosen = [s for s in self.market.symbols.values() if status in (None, s.status)]
        return _json(
            {
                "timezone": "UTC",
                "serverTime": now_ms(),
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": self.limiter.limit,
                    },
                    {
                        "rateLimitType": "ORDERS",
                        "interval": "SECOND",
                        "intervalNum": 10,
                        "limit": 50,
                    },
                    {
                        "rateLimitType": "RAW_REQUESTS",
                        "interval": "MINUTE",
                        "intervalNum": 5,
                        "limit": 61000,
                    },
                ],
                "exchangeFilters": [],
                "symbols": [_symbol_info(s) for s in chosen],
            }
        )

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        raw_symbols = request.query.get("symbols")
        count: int | None = 1 if "symbol" in request.query else None
        if raw_symbols is not None:
            with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                count = len(orjson.loads(raw_symbols))
        self.charge(request, ticker_24hr_weight(count))
        self.check_params(request, {"symbol", "symbols", "type", "symbolStatus"})
        kind = request.query.get("type", "FULL")
        if kind not in ("FULL", "MINI"):
            raise ApiError(400, -1139, "Invalid ticker type.")
        if "symbol" in request.query and raw_symbols is not None:
            raise ApiError(400, -1128, "Combination of optional parameters invalid.")
        one = self.symbol_param(request, required=False)
        now = now_ms()
        if one is not None:
            self.status_param(request, one)
            return _json(_rest_ticker(one.ticker(now), kind))
        chosen = self.symbols_param(request) or list(self.market.symbols.values())
        return _json([_rest_ticker(s.ticker(now), kind) for s in chosen])

    async def trades(self, request: web.Request) -> web.Response:
        self.charge(request, TRADES_WEIGHT)
        self.check_params(request, {"symbol", "limit"})
        sym = self.symbol_param(request)
        assert sym is not None
        limit = min(1000, self.int_param(request, "limit", 500))
        recent = sym.trades.last(limit)
        return _json([rest_trade(t) for t in recent])

    async def historical_trades(self, request: web.Request) -> web.Response:
        self.charge(request, HISTORICAL_TRADES_WEIGHT)
        self.check_params(request, {"symbol", "limit", "fromId"})
        sym = self.symbol_param(request)
        assert sym is not None
        limit = min(1000, self.int_param(request, "limit", 500))
        chosen = sym.history.select(limit, from_id=self.long_param(request, "fromId"))
        return _json([rest_trade(t) for t in chosen])

    async def agg_trades(self, request: web.Request) -> web.Response:
        self.charge(request, AGG_TRADES_WEIGHT)
        self.check_params(request, {"symbol", "fromId", "startTime", "endTime", "limit"})
        sym = self.symbol_param(request)
        assert sym is not None
        limit = min(1000, self.int_param(request, "limit", 500))
        start, end = self.long_param(request, "startTime"), self.long_param(request, "endTime")
        if start is not None and end is not None and end - start > HOUR:
            raise ApiError(400, -1127, "More than 1 hours between startTime and endTime.")
        chosen = sym.history.select(limit, self.long_param(request, "fromId"), start, end)
        return _json([rest_agg_trade(t) for t in chosen])

    async def avg_price(self, request: web.Request) -> web.Response:
        self.charge(request, AVG_PRICE_WEIGHT)
        self.check_params(request, {"symbol"})
        sym = self.symbol_param(request)
        assert sym is not None
        price, close_time = sym.history.avg_price(now_ms())
        return _json({"mins": AVG_PRICE_MINUTES, "price": fmt(price), "closeTime": close_time})

    async def klines(self, request: web.Request) -> web.Response:
        self.charge(request, KLINES_WEIGHT)
        self.check_params(
            request, {"symbol", "interval", "startTime", "endTime", "timeZone", "limit"}
        )
        sym = self.symbol_param(request)
        assert sym is not None
        interval = request.query.get("interval")
        if not interval:
            raise ApiError(
                400,
                -1102,
                "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.",
            )
        if interval not in KLINE_INTERVALS:
            raise ApiError(400, -1120, "Invalid interval.")
        try:
            offset = parse_time_zone(request.query.get("timeZone", "0"))
        except ValueError:
            raise ApiError(400, -1130, "Data sent for parameter 'timeZone' is not valid.") from None
        bars = sym.history.klines(
            KLINE_INTERVALS[interval],
            now_ms(),
            min(1000, self.int_param(request, "limit", 500)),
            start=self.long_param(request, "startTime"),
            end=self.long_param(request, "endTime"),
            offset=offset,
        )
        return _json([kline_row(b) for b in bars])

    async def book_ticker(self, request: web.Request) -> web.Response:
        self.charge(request, 2 if "symbol" in request.query else 4)
        self.check_params(request, {"symbol", "symbols", "symbolStatus"})
        one, chosen = self.chosen_symbols(request)
        if one is not None:
            return _json(one.book_ticker())
        return _json([s.book_ticker() for s in chosen])

    async def price_ticker(self, request: web.Request) -> web.Response:
        self.charge(request, 2 if "symbol" in request.query else 4)
        self.check_params(request, {"symbol", "symbols", "symbolStatus"})
        one, chosen = self.chosen_symbols(request)
        if one is not None:
            return _json({"symbol": one.symbol, "price": fmt(one.stats.last)})
        return _json([{"symbol": s.symbol, "price": fmt(s.stats.last)} for s in chosen])

    async def window_ticker(self, request: web.Request) -> web.Response:
        self.charge(request, window_ticker_weight(self.symbol_count(request) or 1))
        self.check_params(request, {"symbol", "symbols", "windowSize", "type", "symbolStatus"})
        if "symbol" not in request.query and "symbols" not in request.query:
            raise ApiError(
                400,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        kind = request.query.get("type", "FULL")
        if kind not in ("FULL", "MINI"):
            raise ApiError(400, -1139, "Invalid ticker type.")
        try:
            size = parse_window(request.query.get("windowSize", "1d"))
        except ValueError:
            raise ApiError(
                400, -1130, "Data sent for parameter 'windowSize' is not valid."
            ) from None
        if (self.symbol_count(request) or 0) > MAX_WINDOW_SYMBOLS:
            raise ApiError(
                400,
                -1101,
                "Too many values sent for parameter 'symbols', maximum allowed up to "
                f"{MAX_WINDOW_SYMBOLS}.",
            )
        one, chosen = self.chosen_symbols(request)
        now = now_ms()
        tickers = [window_ticker(s.symbol, s.history.window(size, now), kind) for s in chosen]
        return _json(tickers[0] if one is not None else tickers)

    async def ping(self, request: web.Request) -> web.Response:
        self.charge(request, 1)
        return _json({})

    async def server_time(self, request: web.Request) -> web.Response:
        self.charge(request, 1)
        return _json({"serverTime": now_ms()})

    # -- assets and settings -------------------------------------------------------------------

    async def assets(self, request: web.Request) -> web.Response:
        if self.assets_doc is not None:
            return _raw(*self.assets_doc)
        names = [f"{s.spec.base}-{s.spec.quote}" for s in self.market.trading()]
        return _json({"priority": names[:2], "others": names[2:]})

    async def settings(self, request: web.Request) -> web.Response:
        return _raw(*self.settings_doc)

    # -- admin ---------------------------------------------------------------------------------

    def _admin_symbol(self, request: web.Request) -> SymbolMarket:
        sym = self.symbol_param(request)
        assert sym is not None
        return sym

    async def admin_book(self, request: web.Request) -> web.Response:
        return _json(self._admin_symbol(request).depth())

    async def admin_trades(self, request: web.Request) -> web.Response:
        sym = self._admin_symbol(request)
        limit = self.int_param(request, "limit", len(sym.trades) or 1)
        recent = sym.trades.last(limit)
        body = b",".join(encode_trade(sym.symbol, t, t.time) for t in recent)
        return web.Response(body=b"[%s]" % body, content_type="application/json")

    async def admin_ticker(self, request: web.Request) -> web.Response:
        return _json(self._admin_symbol(request).ticker(now_ms()))

    async def admin_add_faults(self, request: web.Request) -> web.Response:
        body = await _body(request)
        items = body if isinstance(body, list) else [body]
        try:
            faults = [parse_fault(item) for item in items]
        except FaultError as exc:
            raise ApiError(400, -1, str(exc)) from None
        for fault in faults:
            if fault.symbol is not None:
                self.lookup(fault.symbol)
            await self._apply(fault)
        return _json({"faults": [f.to_json() for f in self.faults.faults]})

    async def admin_list_faults(self, request: web.Request) -> web.Response:
        return _json({"faults": [f.to_json() for f in self.faults.faults]})

    async def admin_clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        self.frozen.clear()
        for conn in self.connections:
            conn.silent = False
        return _json({"faults": []})

    def _add_fault(self, fault: Fault) -> None:
        if fault.type == "stale_snapshot":
            sym = self.market.symbols.get(fault.symbol or "")
            self.frozen[fault.symbol] = sym.freeze() if sym else None
        self.faults.add(fault)

    async def _apply(self, fault: Fault) -> None:
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
        elif fault.type == "server_shutdown":
            event = orjson.dumps({"e": "serverShutdown", "E": now_ms()})
            wrapped = b'{"stream":"!serverShutdown","data":%s}' % event
            for conn in targets:
                conn.push(wrapped if conn.session.combined else event)
        elif fault.type == "malformed":
            for conn in targets:
                conn.push(self._malformed(fault, conn))
        elif fault.type == "stale_snapshot" and fault.symbol is None:
            raise ApiError(400, -1, "stale_snapshot needs a symbol")
        else:
            self._add_fault(fault)

    def _malformed(self, fault: Fault, conn: Connection) -> bytes:
        if fault.kind == "not_json":
            return b'{"e":"depthUpdate","E":'
        symbol = fault.symbol or next(iter(self.market.symbols))
        sym = self.market.symbols[symbol]
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

    async def admin_pause(self, request: web.Request) -> web.Response:
        self.paused = True
        return _json({"paused": True, "ticks": self.ticks})

    async def admin_resume(self, request: web.Request) -> web.Response:
        self.paused = False
        return _json({"paused": False, "ticks": self.ticks})

    async def admin_step(self, request: web.Request) -> web.Response:
        self.step_all(self.int_param(request, "n", 1))
        return _json({"paused": self.paused, "ticks": self.ticks})

    async def admin_symbols(self, request: web.Request) -> web.Response:
        return _json(
            [{"symbol": s.symbol, "status": s.status} for s in self.market.symbols.values()]
        )

    async def admin_list_symbol(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if not isinstance(body, dict) or not isinstance(body.get("symbol"), str):
            raise ApiError(400, -1, 'expected {"symbol": "NEWUSDT", "base": ..., "quote": ...}')
        symbol = body["symbol"].upper()
        if not _SYMBOL_PARAM.match(symbol):
            raise ApiError(400, -1100, "symbol must match ^[A-Z0-9]{1,20}$")
        quote = str(body.get("quote", "USDT")).upper()
        base = str(body.get("base", symbol.removesuffix(quote) or symbol)).upper()
        try:
            price = parse_units(str(body.get("price", "1.00000000")))
            tick = parse_units(str(body.get("tickSize", "0.00001000")))
            step = parse_units(str(body.get("stepSize", "0.01000000")))
        except ValueError as exc:
            raise ApiError(400, -1, str(exc)) from None
        if price <= 0 or tick <= 0 or step <= 0 or price // tick < 1000:
            raise ApiError(
                400, -1, "price, tickSize and stepSize must be positive, price >= 1000 ticks"
            )
        sym = self.market.add(
            SymbolSpec(symbol, base, quote, price // tick * tick, tick, step), now_ms()
        )
        return _json({"symbol": sym.symbol, "status": sym.status})

    async def admin_symbol_status(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if not isinstance(body, dict) or body.get("status") not in ALL_STATUSES:
            raise ApiError(400, -1, f"expected {{'symbol': S, 'status': one of {ALL_STATUSES}}}")
        sym = self.lookup(str(body.get("symbol", "")))
        sym.status = body["status"]
        return _json({"symbol": sym.symbol, "status": sym.status})

    async def admin_delist(self, request: web.Request) -> web.Response:
        sym = self._admin_symbol(request)
        del self.market.symbols[sym.symbol]
        return _json({"symbol": sym.symbol, "status": "DELISTED"})

    async def admin_put_assets(self, request: web.Request) -> web.Response:
        self.assets_doc = (_status_param(request), await request.read())
        return _json({"assets": "stored"})

    async def admin_reset_assets(self, request: web.Request) -> web.Response:
        self.assets_doc = None
        return _json({"assets": "derived from listed symbols"})

    async def admin_put_settings(self, request: web.Request) -> web.Response:
        self.settings_doc = (_status_param(request), await request.read())
        return _json({"settings": "stored"})

    async def admin_requests(self, request: web.Request) -> web.Response:
        return _json(list(self.rest_log))

    async def admin_connections(self, request: web.Request) -> web.Response:
        return _json(
            [
                {
                    "id": c.serial,
                    "peer": c.peer,
                    "streams": list(c.session.subscriptions),
                    "combined": c.session.combined,
                    "silent": c.silent,
                    "queued": len(c.queue),
                }
                for c in self.connections
            ]
        )

    # -- application -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        # Long combined-stream URLs (up to 1024 names) exceed aiohttp's default 8 KB line.
        app = web.Application(middlewares=[self._errors], handler_args={"max_line_size": 64 * 1024})
        get, post = web.get, web.post
        app.add_routes(
            [
                get("/api/v3/depth", self.depth),
                get("/api/v3/exchangeInfo", self.exchange_info),
                get("/api/v3/ticker/24hr", self.ticker_24hr),
                get("/api/v3/trades", self.trades),
                get("/api/v3/historicalTrades", self.historical_trades),
                get("/api/v3/aggTrades", self.agg_trades),
                get("/api/v3/avgPrice", self.avg_price),
                get("/api/v3/klines", self.klines),
                get("/api/v3/uiKlines", self.klines),
                get("/api/v3/ticker/bookTicker", self.book_ticker),
                get("/api/v3/ticker/price", self.price_ticker),
                get("/api/v3/ticker", self.window_ticker),
                get("/api/v3/ping", self.ping),
                get("/api/v3/time", self.server_time),
                get("/ws", self.ws_raw),
                get("/ws/{streams:.*}", self.ws_raw),
                get("/stream", self.ws_combined),
                get("/assets", self.assets),
                get("/settings", self.settings),
                get("/admin/book", self.admin_book),
                get("/admin/trades", self.admin_trades),
                get("/admin/ticker", self.admin_ticker),
                get("/admin/faults", self.admin_list_faults),
                post("/admin/faults", self.admin_add_faults),
                web.delete("/admin/faults", self.admin_clear_faults),
                post("/admin/pause", self.admin_pause),
                post("/admin/resume", self.admin_resume),
                post("/admin/step", self.admin_step),
                get("/admin/symbols", self.admin_symbols),
                post("/admin/symbols", self.admin_list_symbol),
                post("/admin/symbols/status", self.admin_symbol_status),
                web.delete("/admin/symbols", self.admin_delist),
                web.put("/admin/assets", self.admin_put_assets),
                web.delete("/admin/assets", self.admin_reset_assets),
                web.put("/admin/settings", self.admin_put_settings),
                get("/admin/connections", self.admin_connections),
                get("/admin/requests", self.admin_requests),
                get("/healthz", self.healthz),
                get("/metrics", self.metrics),
            ]
        )
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._stop)
        return app

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), content_type="text/plain")

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"ok": True, "symbols": len(self.market.symbols), "ticks": self.ticks})

    async def _start(self, app: web.Application) -> None:
        self._tasks = [asyncio.create_task(self.clock()), asyncio.create_task(self.every_second())]

    async def _stop(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for conn in list(self.connections):
            await conn.close(1001, "Server stopping")

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = web.Response(
                status=exc.status,
                body=orjson.dumps({"code": exc.code, "msg": exc.msg})
                if exc.body is None
                else exc.body,
                content_type="application/json",
                headers=exc.headers,
            )
            if exc.status == 400:
                BAD_INPUT.labels("simulator_rest", str(exc.code)).inc()
            log.info("rest_error", path=request.path, status=exc.status, code=exc.code, msg=exc.msg)
        if request.path.startswith("/api/"):
            self.rest_log.append(
                {
                    "time": time.time(),
                    "path": request.path,
                    "query": request.query_string,
                    "status": response.status,
                }
            )
        used = request.get("used_weight")
        if used is not None and not response.prepared:
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(used)
            response.headers["X-MBX-USED-WEIGHT"] = str(used)
        return response


def _fault_error(fault: Fault) -> ApiError:
    if fault.type == "rest_malformed":
        body = b'{"lastUpdateId":' if fault.kind == "not_json" else b'{"lastUpdateId":"x"}'
        return ApiError(200, 0, "malformed reply (injected)", body=body)
    headers = {"Retry-After": str(fault.retry_after)}
    if fault.status == 429:
        return ApiError(429, -1003, "Too many requests (injected fault).", headers)
    if fault.status == 418:
        return ApiError(
            418, -1003, "Way too much request weight used; IP banned (injected).", headers
        )
    return ApiError(
        fault.status, -1001, "Internal error; unable to process your request (injected)."
    )


def _symbol_info(sym: SymbolMarket) -> dict[str, Any]:
    spec = sym.spec
    return {
        "symbol": spec.symbol,
        "status": sym.status,
        "baseAsset": spec.base,
        "baseAssetPrecision": 8,
        "quoteAsset": spec.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": fmt(spec.tick),
                "maxPrice": fmt(max(spec.tick, spec.price * 1000 // spec.tick * spec.tick)),
                "tickSize": fmt(spec.tick),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": fmt(spec.step),
                "maxQty": fmt(9_000_000 * SCALE // spec.step * spec.step),
                "stepSize": fmt(spec.step),
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


_FULL_KEYS = {
    "s": "symbol",
    "p": "priceChange",
    "P": "priceChangePercent",
    "w": "weightedAvgPrice",
    "x": "prevClosePrice",
    "c": "lastPrice",
    "Q": "lastQty",
    "b": "bidPrice",
    "B": "bidQty",
    "a": "askPrice",
    "A": "askQty",
    "o": "openPrice",
    "h": "highPrice",
    "l": "lowPrice",
    "v": "volume",
    "q": "quoteVolume",
    "O": "openTime",
    "C": "closeTime",
    "F": "firstId",
    "L": "lastId",
    "n": "count",
}
_MINI_DROP = {"p", "P", "w", "x", "Q", "b", "B", "a", "A"}


def _rest_ticker(event: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        name: event[key]
        for key, name in _FULL_KEYS.items()
        if kind == "FULL" or key not in _MINI_DROP
    }


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def _raw(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def _status_param(request: web.Request) -> int:
    raw = request.query.get("status", "200")
    if not raw.isdigit() or not 100 <= int(raw) <= 599:
        raise ApiError(400, -1, "status must be an HTTP status code")
    return int(raw)


async def _body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, -1, f"body is not JSON: {exc}") from None

"""Binance's stream names, live control messages, request weights and rate limits, with no I/O.

The server shell feeds text and timestamps in and gets replies and verdicts out.
"""

from __future__ import annotations

import contextlib
import math
import re
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_STREAMS = 1024

# Streams the simulator feeds as events happen or every second, besides ``@kline_<interval>``
# and ``@avgPrice`` (see ``periodic_stream``); anything else that is well formed is acknowledged
# and stays quiet.
FED_KINDS = ("depth@100ms", "depth", "trade", "aggTrade", "ticker", "miniTicker", "bookTicker")
ALL_MINI_TICKERS = "!miniTicker@arr"
AVG_PRICE = "avgPrice"

_KLINE = "1s|1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M"
_SYMBOL_STREAM = re.compile(
    r"^([A-Za-z0-9]{1,20})@("
    r"depth(?:@100ms|@1000ms)?|depth(?:5|10|20)(?:@100ms|@1000ms)?"
    r"|trade|aggTrade|ticker|miniTicker|bookTicker|avgPrice|referencePrice|blockTrade"
    r"|ticker_(?:1h|4h|1d)|kline_(?:" + _KLINE + r")(?:@\+08:00)?)$"
)
_GLOBAL_STREAM = re.compile(r"^!(?:miniTicker@arr|ticker@arr|bookTicker|ticker_(?:1h|4h|1d)@arr)$")
# Binance: "alphanumeric strings; max length 36" -- a UUID's length: the official Spot SDK sends
# UUIDs (hyphens included) as the ids of its control messages.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")
_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")


class InvalidStream(ValueError):
    pass


def canonical_stream(name: str) -> str:
    """The stream that ``name`` subscribes to, as the simulator feeds it: the symbol lower-cased,
    ``@depth@1000ms`` as ``@depth``; raises InvalidStream if malformed. (Events carry the name
    as subscribed.)"""
    match = _SYMBOL_STREAM.match(name)
    if match:
        kind = match.group(2)
        if kind == "depth@1000ms":
            kind = "depth"
        return f"{match.group(1).lower()}@{kind}"
    if _GLOBAL_STREAM.match(name):
        return name
    raise InvalidStream(name)


def url_streams(path: str) -> list[str]:
    """The well-formed stream names of a ``/ws/<name>[/<name>...]`` path, in order and once
    each: Binance opens the connection whatever the path holds (ccxt opens ``/ws/<n>`` and then
    subscribes), subscribing only what names a stream."""
    names = []
    for name in path.split("/"):
        with contextlib.suppress(InvalidStream):
            canonical_stream(name)
            names.append(name)
    return list(dict.fromkeys(names))


def query_streams(raw_query: str) -> list[str]:
    """The names in ``streams=a/b/c`` of a still-encoded query string. A ``+`` stays a plus
    (``@kline_1h@+08:00``), unlike form decoding, which reads it as a space."""
    for part in raw_query.split("&"):
        key, _, value = part.partition("=")
        if key == "streams":
            return [name for name in urllib.parse.unquote(value).split("/") if name]
    return []


@dataclass(frozen=True)
class PeriodicStream:
    """A stream sent every second (``@avgPrice``) or every ``seconds`` (``@kline_<interval>``:
    2 s, 1 s for ``1s``), with its kline interval and zone offset (ms east of UTC)."""

    symbol: str  # upper case, as in the events
    interval: str | None = None
    offset: int = 0

    @property
    def seconds(self) -> int:
        return 1 if self.interval in (None, "1s") else 2


def periodic_stream(canonical: str) -> PeriodicStream | None:
    """The schedule of a canonical stream name, or None for one that is not periodic."""
    symbol, _, kind = canonical.partition("@")
    if kind == AVG_PRICE:
        return PeriodicStream(symbol.upper())
    if not kind.startswith("kline_"):
        return None
    interval, _, zone = kind.removeprefix("kline_").partition("@")
    return PeriodicStream(symbol.upper(), interval, 8 * 3_600_000 if zone else 0)


def stream_names(symbol: str) -> dict[str, str]:
    """kind -> stream name for one symbol, e.g. ``depth@100ms -> btcusdt@depth@100ms``."""
    lower = symbol.lower()
    return {kind: f"{lower}@{kind}" for kind in FED_KINDS}


def text_frame_header(length: int) -> bytes:
    """RFC 6455 header of a final, unmasked text frame (what a server sends)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


def error_reply(code: int, msg: str, request_id: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": request_id})


@dataclass
class ControlResult:
    reply: bytes
    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.reply.startswith(b'{"error"')


@dataclass
class ControlSession:
    """One connection's subscriptions and properties, changed by its control messages."""

    subscriptions: dict[str, None] = field(default_factory=dict)  # ordered set, as subscribed
    combined: bool = False
    max_streams: int = MAX_STREAMS

    def receive(self, text: str | bytes) -> ControlResult:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return ControlResult(error_reply(3, f"Invalid JSON: {exc}", None))
        if not isinstance(request, dict):
            return ControlResult(error_reply(2, "Invalid request: expected an object", None))
        request_id = request.get("id")
        if not _valid_id(request_id):
            return ControlResult(
                error_reply(2, "Invalid request: request ID must be an unsigned integer", None)
            )
        method = request.get("method")
        if method is None:
            return ControlResult(
                error_reply(2, "Invalid request: missing field `method`", request_id)
            )
        if method not in _METHODS:
            expected = ", ".join(f"`{m}`" for m in _METHODS)
            return ControlResult(
                error_reply(
                    2,
                    f"Invalid request: unknown variant {method}, expected one of {expected}",
                    request_id,
                )
            )
        params = request.get("params", [])
        if not isinstance(params, list):
            return ControlResult(
                error_reply(2, "Invalid request: params must be a list", request_id)
            )
        handler = getattr(self, "_" + method.lower())
        result: ControlResult = handler(params, request_id)
        return result

    def _subscribe(self, params: list[Any], request_id: Any) -> ControlResult:
        names = self._streams(params)
        if names is None:
            return ControlResult(error_reply(2, "Invalid request: invalid stream", request_id))
        new = [n for n in dict.fromkeys(names) if n not in self.subscriptions]
        if len(self.subscriptions) + len(new) > self.max_streams:
            msg = f"Invalid request: too many streams (at most {self.max_streams} per connection)"
            return ControlResult(error_reply(2, msg, request_id))
        self.subscriptions.update(dict.fromkeys(new))
        return ControlResult(_result(None, request_id), subscribe=new)

    def _unsubscribe(self, params: list[Any], request_id: Any) -> ControlResult:
        names = self._streams(params)
        if names is None:
            return ControlResult(error_reply(2, "Invalid request: invalid stream", request_id))
        gone = [n for n in dict.fromkeys(names) if n in self.subscriptions]
        for name in gone:
            del self.subscriptions[name]
        return ControlResult(_result(None, request_id), unsubscribe=gone)

    def _list_subscriptions(self, params: list[Any], request_id: Any) -> ControlResult:
        if params:
            return ControlResult(error_reply(2, "Invalid request: too many parameters", request_id))
        return ControlResult(_result(list(self.subscriptions), request_id))

    def _set_property(self, params: list[Any], request_id: Any) -> ControlResult:
        if len(params) > 2:
            return ControlResult(error_reply(2, "Invalid request: too many parameters", request_id))
        checked = self._property(params, request_id)
        if isinstance(checked, ControlResult):
            return checked
        if len(params) < 2 or not isinstance(params[1], bool):
            return ControlResult(error_reply(1, "Invalid value type: expected Boolean", request_id))
        self.combined = params[1]
        return ControlResult(_result(None, request_id))

    def _get_property(self, params: list[Any], request_id: Any) -> ControlResult:
        if len(params) > 1:
            return ControlResult(error_reply(2, "Invalid request: too many parameters", request_id))
        checked = self._property(params, request_id)
        if isinstance(checked, ControlResult):
            return checked
        return ControlResult(_result(self.combined, request_id))

    @staticmethod
    def _property(params: list[Any], request_id: Any) -> ControlResult | None:
        if not params or not isinstance(params[0], str):
            return ControlResult(
                error_reply(2, "Invalid request: property name must be a string", request_id)
            )
        if params[0] != "combined":
            return ControlResult(error_reply(0, "Unknown property", request_id))
        return None

    @staticmethod
    def _streams(params: list[Any]) -> list[str] | None:
        """The stream names as given (Binance echoes them so), or None if one is malformed."""
        if not all(isinstance(p, str) for p in params):
            return None
        try:
            for name in params:
                canonical_stream(name)
        except InvalidStream:
            return None
        return params


def _result(value: Any, request_id: Any) -> bytes:
    return orjson.dumps({"result": value, "id": request_id})


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and bool(_REQUEST_ID.match(value))


# -- request weight (those the project's client also spends: marketpipe.exchange.weights) ---------

AGG_TRADES_WEIGHT = 4
HISTORICAL_TRADES_WEIGHT = 25
AVG_PRICE_WEIGHT = 2
KLINES_WEIGHT = 2  # klines and uiKlines
MAX_WINDOW_SYMBOLS = 100  # symbols in one rolling-window ticker request


def window_ticker_weight(symbol_count: int) -> int:
    """``/api/v3/ticker``: 4 a symbol, 200 beyond 50 symbols."""
    return 200 if symbol_count > 50 else 4 * symbol_count


@dataclass(frozen=True)
class Verdict:
    status: int  # 200, 429 or 418
    used: int
    retry_after: int = 0


@dataclass
class _Client:
    minute: int = -1
    used: int = 0
    limited: bool = False
    banned_until: float = 0.0


@dataclass
class WeightLimiter:
    """Per-client request weight per clock minute: over the limit 429, sending on while
    limited 418 (a ban of ``ban_seconds``)."""

    limit: int = 6000
    ban_seconds: float = 120.0
    clients: dict[str, _Client] = field(default_factory=dict)

    def charge(self, client: str, weight: int, now: float) -> Verdict:
        state = self.clients.setdefault(client, _Client())
        minute = int(now // 60)
        if minute != state.minute:
            state.minute, state.used, state.limited = minute, 0, False
        if state.banned_until > now:
            return Verdict(418, state.used, math.ceil(state.banned_until - now))
        if state.limited:
            state.banned_until = now + self.ban_seconds
            return Verdict(418, state.used, math.ceil(self.ban_seconds))
        if state.used + weight > self.limit:
            state.limited = True
            return Verdict(429, state.used, max(1, math.ceil((minute + 1) * 60 - now)))
        state.used += weight
        return Verdict(200, state.used)


@dataclass
class MessageRate:
    """Incoming frames (pings, pongs, control) per connection: at most ``limit`` per second."""

    limit: int = 5
    times: deque[float] = field(default_factory=deque)

    def allow(self, now: float) -> bool:
        times = self.times
        times.append(now)
        while times and times[0] <= now - 1.0:
            times.popleft()
        return len(times) <= self.limit

"""The simulator's REST routes (``/api/v3/...``): parse, charge the request's weight, ask the
market model, serialise -- with Binance's parameters, weights and errors."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from aiohttp import web

from marketpipe.exchange.weights import (
    EXCHANGE_INFO_WEIGHT,
    TRADES_WEIGHT,
    depth_weight,
    ticker_24hr_weight,
)
from marketpipe.simulator.faults import Fault
from marketpipe.simulator.history import (
    AVG_PRICE_MINUTES,
    HOUR,
    KLINE_INTERVALS,
    kline_row,
    parse_time_zone,
    parse_window,
    window_ticker,
)
from marketpipe.simulator.market import ALL_STATUSES, SymbolMarket, rest_agg_trade, rest_trade
from marketpipe.simulator.params import (
    ApiError,
    int_param,
    json_response,
    lookup,
    required_symbol,
    symbol_param,
)
from marketpipe.simulator.protocol import (
    AGG_TRADES_WEIGHT,
    AVG_PRICE_WEIGHT,
    HISTORICAL_TRADES_WEIGHT,
    KLINES_WEIGHT,
    MAX_WINDOW_SYMBOLS,
    window_ticker_weight,
)
from marketpipe.simulator.state import Exchange, now_ms
from marketpipe.simulator.units import SCALE, fmt


class RestApi:
    """The Binance REST API over one exchange."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.market = exchange.market

    def routes(self) -> list[web.RouteDef]:
        get = web.get
        return [
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
        ]

    def charge(self, request: web.Request, weight: int) -> None:
        fault = self.exchange.faults.on_rest(request.path)
        if fault is not None:
            raise _fault_error(fault)
        verdict = self.exchange.limiter.charge(request.remote or "?", weight, time.time())
        request["used_weight"] = verdict.used
        headers = {"Retry-After": str(verdict.retry_after)}
        if verdict.status == 429:
            msg = "Too much request weight used; current limit is %d request weight per 1 MINUTE."
            raise ApiError(429, -1003, msg % self.exchange.limiter.limit, headers)
        if verdict.status == 418:
            raise ApiError(418, -1003, "Way too much request weight used; IP banned.", headers)

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
        return [lookup(self.market, n) for n in names]

    def chosen_symbols(
        self, request: web.Request
    ) -> tuple[SymbolMarket | None, list[SymbolMarket]]:
        """(``symbol``, or None and the ``symbols`` or else all of them, without those whose
        status differs from ``symbolStatus``); a single symbol of another status is -1220."""
        if "symbol" in request.query and "symbols" in request.query:
            raise ApiError(400, -1128, "Combination of optional parameters invalid.")
        one = symbol_param(request, self.market, required=False)
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

    def status_param(self, request: web.Request, sym: SymbolMarket) -> None:
        wanted = request.query.get("symbolStatus")
        if wanted is not None and wanted != sym.status:
            raise ApiError(
                400, -1220, "The symbol's status does not match the requested symbolStatus."
            )

    async def depth(self, request: web.Request) -> web.Response:
        limit = min(5000, _peek_limit(request, 100))
        self.charge(request, depth_weight(limit))
        self.check_params(request, {"symbol", "limit", "symbolStatus"})
        sym = required_symbol(request, self.market)
        self.status_param(request, sym)
        limit = min(5000, int_param(request, "limit", 100))
        stale, slow = self.exchange.faults.on_snapshot(sym.symbol)
        source = self.exchange.source
        book = sym.freeze() if source is None else source.book(sym.symbol)
        if book is None:
            raise ApiError(503, -1008, "no book yet for this symbol in the replay")
        if stale is not None:
            book = self.exchange.frozen.get(sym.symbol) or self.exchange.frozen.get(None) or book
        if slow is not None:
            await asyncio.sleep(slow.seconds)
        return json_response(book.depth(limit))

    async def exchange_info(self, request: web.Request) -> web.Response:
        self.charge(request, EXCHANGE_INFO_WEIGHT)
        self.check_params(
            request, {"symbol", "symbols", "permissions", "showPermissionSets", "symbolStatus"}
        )
        one = symbol_param(request, self.market, required=False)
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
        return json_response(
            {
                "timezone": "UTC",
                "serverTime": now_ms(),
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": self.exchange.limiter.limit,
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
        one = symbol_param(request, self.market, required=False)
        now = now_ms()
        if one is not None:
            self.status_param(request, one)
            return json_response(_rest_ticker(one.ticker(now), kind))
        chosen = self.symbols_param(request) or list(self.market.symbols.values())
        return json_response([_rest_ticker(s.ticker(now), kind) for s in chosen])

    async def trades(self, request: web.Request) -> web.Response:
        self.charge(request, TRADES_WEIGHT)
        self.check_params(request, {"symbol", "limit"})
        sym = required_symbol(request, self.market)
        limit = min(1000, int_param(request, "limit", 500))
        recent = sym.trades.last(limit)
        return json_response([rest_trade(t) for t in recent])

    async def historical_trades(self, request: web.Request) -> web.Response:
        self.charge(request, HISTORICAL_TRADES_WEIGHT)
        self.check_params(request, {"symbol", "limit", "fromId"})
        sym = required_symbol(request, self.market)
        limit = min(1000, int_param(request, "limit", 500))
        chosen = sym.history.select(limit, from_id=self.long_param(request, "fromId"))
        return json_response([rest_trade(t) for t in chosen])

    async def agg_trades(self, request: web.Request) -> web.Response:
        self.charge(request, AGG_TRADES_WEIGHT)
        self.check_params(request, {"symbol", "fromId", "startTime", "endTime", "limit"})
        sym = required_symbol(request, self.market)
        limit = min(1000, int_param(request, "limit", 500))
        start, end = self.long_param(request, "startTime"), self.long_param(request, "endTime")
        if start is not None and end is not None and end - start > HOUR:
            raise ApiError(400, -1127, "More than 1 hours between startTime and endTime.")
        chosen = sym.history.select(limit, self.long_param(request, "fromId"), start, end)
        return json_response([rest_agg_trade(t) for t in chosen])

    async def avg_price(self, request: web.Request) -> web.Response:
        self.charge(request, AVG_PRICE_WEIGHT)
        self.check_params(request, {"symbol"})
        sym = required_symbol(request, self.market)
        price, close_time = sym.history.avg_price(now_ms())
        return json_response(
            {"mins": AVG_PRICE_MINUTES, "price": fmt(price), "closeTime": close_time}
        )

    async def klines(self, request: web.Request) -> web.Response:
        self.charge(request, KLINES_WEIGHT)
        self.check_params(
            request, {"symbol", "interval", "startTime", "endTime", "timeZone", "limit"}
        )
        sym = required_symbol(request, self.market)
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
            min(1000, int_param(request, "limit", 500)),
            start=self.long_param(request, "startTime"),
            end=self.long_param(request, "endTime"),
            offset=offset,
        )
        return json_response([kline_row(b) for b in bars])

    async def book_ticker(self, request: web.Request) -> web.Response:
        self.charge(request, 2 if "symbol" in request.query else 4)
        self.check_params(request, {"symbol", "symbols", "symbolStatus"})
        one, chosen = self.chosen_symbols(request)
        if one is not None:
            return json_response(one.book_ticker())
        return json_response([s.book_ticker() for s in chosen])

    async def price_ticker(self, request: web.Request) -> web.Response:
        self.charge(request, 2 if "symbol" in request.query else 4)
        self.check_params(request, {"symbol", "symbols", "symbolStatus"})
        one, chosen = self.chosen_symbols(request)
        if one is not None:
            return json_response({"symbol": one.symbol, "price": fmt(one.stats.last)})
        return json_response([{"symbol": s.symbol, "price": fmt(s.stats.last)} for s in chosen])

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
        return json_response(tickers[0] if one is not None else tickers)

    async def ping(self, request: web.Request) -> web.Response:
        self.charge(request, 1)
        return json_response({})

    async def server_time(self, request: web.Request) -> web.Response:
        self.charge(request, 1)
        return json_response({"serverTime": now_ms()})


def _peek_limit(request: web.Request, default: int) -> int:
    raw = request.query.get("limit", "")
    return int(raw) if raw.isdigit() else default


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

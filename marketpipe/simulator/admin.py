"""The simulator's admin API (``/admin/...``), the assets and settings documents it edits
(``/assets``, ``/settings``), and its health and metrics."""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client import generate_latest

from marketpipe.simulator.faults import CONNECTION_FAULTS, FaultError, parse_fault
from marketpipe.simulator.market import ALL_STATUSES, SymbolSpec, encode_trade
from marketpipe.simulator.params import (
    SYMBOL_PARAM,
    ApiError,
    int_param,
    json_body,
    json_response,
    lookup,
    raw_response,
    required_symbol,
    status_code_param,
)
from marketpipe.simulator.state import Exchange, now_ms
from marketpipe.simulator.streams import StreamHub
from marketpipe.simulator.units import parse_units

DEFAULT_SETTINGS = {"DEFAULT": {"MaxSpreadPct": 35, "Depth": 250}, "BTCUSDT": {"MaxSpreadPct": 5}}


class AdminApi:
    """Tests' view into and control of the exchange, and the documents it serves."""

    def __init__(self, exchange: Exchange, hub: StreamHub) -> None:
        self.exchange = exchange
        self.market = exchange.market
        self.hub = hub
        self.assets_doc: tuple[int, bytes] | None = None  # None: derived from the listing
        self.settings_doc: tuple[int, bytes] = (200, orjson.dumps(DEFAULT_SETTINGS))

    def routes(self) -> list[web.RouteDef]:
        get, post, put, delete = web.get, web.post, web.put, web.delete
        return [
            get("/assets", self.assets),
            get("/settings", self.settings),
            get("/admin/book", self.admin_book),
            get("/admin/trades", self.admin_trades),
            get("/admin/ticker", self.admin_ticker),
            get("/admin/faults", self.admin_list_faults),
            post("/admin/faults", self.admin_add_faults),
            delete("/admin/faults", self.admin_clear_faults),
            post("/admin/pause", self.admin_pause),
            post("/admin/resume", self.admin_resume),
            post("/admin/step", self.admin_step),
            get("/admin/symbols", self.admin_symbols),
            post("/admin/symbols", self.admin_list_symbol),
            post("/admin/symbols/status", self.admin_symbol_status),
            delete("/admin/symbols", self.admin_delist),
            put("/admin/assets", self.admin_put_assets),
            delete("/admin/assets", self.admin_reset_assets),
            put("/admin/settings", self.admin_put_settings),
            get("/admin/connections", self.admin_connections),
            get("/admin/requests", self.admin_requests),
            get("/healthz", self.healthz),
            get("/metrics", self.metrics),
        ]

    async def assets(self, request: web.Request) -> web.Response:
        if self.assets_doc is not None:
            return raw_response(*self.assets_doc)
        names = [f"{s.spec.base}-{s.spec.quote}" for s in self.market.trading()]
        return json_response({"priority": names[:2], "others": names[2:]})

    async def settings(self, request: web.Request) -> web.Response:
        return raw_response(*self.settings_doc)

    async def admin_book(self, request: web.Request) -> web.Response:
        return json_response(required_symbol(request, self.market).depth())

    async def admin_trades(self, request: web.Request) -> web.Response:
        sym = required_symbol(request, self.market)
        limit = int_param(request, "limit", len(sym.trades) or 1)
        recent = sym.trades.last(limit)
        body = b",".join(encode_trade(sym.symbol, t, t.time) for t in recent)
        return web.Response(body=b"[%s]" % body, content_type="application/json")

    async def admin_ticker(self, request: web.Request) -> web.Response:
        return json_response(required_symbol(request, self.market).ticker(now_ms()))

    async def admin_add_faults(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        items = body if isinstance(body, list) else [body]
        try:
            faults = [parse_fault(item) for item in items]
        except FaultError as exc:
            raise ApiError(400, -1, str(exc)) from None
        for fault in faults:
            if fault.symbol is not None:
                lookup(self.market, fault.symbol)
            if fault.type in CONNECTION_FAULTS:
                await self.hub.apply(fault)
            elif fault.type == "stale_snapshot" and fault.symbol is None:
                raise ApiError(400, -1, "stale_snapshot needs a symbol")
            else:
                self.exchange.add_fault(fault)
        return json_response({"faults": [f.to_json() for f in self.exchange.faults.faults]})

    async def admin_list_faults(self, request: web.Request) -> web.Response:
        return json_response({"faults": [f.to_json() for f in self.exchange.faults.faults]})

    async def admin_clear_faults(self, request: web.Request) -> web.Response:
        self.exchange.clear_faults()
        self.hub.unsilence()
        return json_response({"faults": []})

    async def admin_pause(self, request: web.Request) -> web.Response:
        self.hub.paused = True
        return json_response({"paused": True, "ticks": self.hub.ticks})

    async def admin_resume(self, request: web.Request) -> web.Response:
        self.hub.paused = False
        return json_response({"paused": False, "ticks": self.hub.ticks})

    async def admin_step(self, request: web.Request) -> web.Response:
        self.hub.step_all(int_param(request, "n", 1))
        return json_response({"paused": self.hub.paused, "ticks": self.hub.ticks})

    async def admin_symbols(self, request: web.Request) -> web.Response:
        return json_response(
            [{"symbol": s.symbol, "status": s.status} for s in self.market.symbols.values()]
        )

    async def admin_list_symbol(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("symbol"), str):
            raise ApiError(400, -1, 'expected {"symbol": "NEWUSDT", "base": ..., "quote": ...}')
        symbol = body["symbol"].upper()
        if not SYMBOL_PARAM.match(symbol):
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
        return json_response({"symbol": sym.symbol, "status": sym.status})

    async def admin_symbol_status(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if not isinstance(body, dict) or body.get("status") not in ALL_STATUSES:
            raise ApiError(400, -1, f"expected {{'symbol': S, 'status': one of {ALL_STATUSES}}}")
        sym = lookup(self.market, str(body.get("symbol", "")))
        sym.status = body["status"]
        return json_response({"symbol": sym.symbol, "status": sym.status})

    async def admin_delist(self, request: web.Request) -> web.Response:
        sym = required_symbol(request, self.market)
        del self.market.symbols[sym.symbol]
        return json_response({"symbol": sym.symbol, "status": "DELISTED"})

    async def admin_put_assets(self, request: web.Request) -> web.Response:
        self.assets_doc = (status_code_param(request), await request.read())
        return json_response({"assets": "stored"})

    async def admin_reset_assets(self, request: web.Request) -> web.Response:
        self.assets_doc = None
        return json_response({"assets": "derived from listed symbols"})

    async def admin_put_settings(self, request: web.Request) -> web.Response:
        self.settings_doc = (status_code_param(request), await request.read())
        return json_response({"settings": "stored"})

    async def admin_requests(self, request: web.Request) -> web.Response:
        return json_response(list(self.exchange.rest_log))

    async def admin_connections(self, request: web.Request) -> web.Response:
        return json_response(self.hub.describe())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), content_type="text/plain")

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response(
            {"ok": True, "symbols": len(self.market.symbols), "ticks": self.hub.ticks}
        )

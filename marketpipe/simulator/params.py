"""Binance-style errors and the request parameters the REST routes and the admin API read."""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from marketpipe.logs import get_logger
from marketpipe.ops.metrics import BAD_INPUT
from marketpipe.simulator.market import Market, SymbolMarket

log = get_logger("marketpipe.simulator")

SYMBOL_PARAM = re.compile(r"^[A-Z0-9\-_.]{1,20}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def errors_middleware(rest_log: deque[dict[str, Any]]) -> Any:
    """Answers an ApiError as Binance would (counted and logged when it is the client's
    fault), logs ``/api/`` requests in ``rest_log`` and sets the used-weight headers."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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
            rest_log.append(
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

    return errors


def json_response(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def raw_response(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def symbol_param(
    request: web.Request, market: Market, required: bool = True
) -> SymbolMarket | None:
    raw = request.query.get("symbol")
    if raw is None or raw == "":
        if required:
            raise ApiError(
                400,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        return None
    return lookup(market, raw)


def required_symbol(request: web.Request, market: Market) -> SymbolMarket:
    sym = symbol_param(request, market)
    assert sym is not None
    return sym


def lookup(market: Market, raw: str) -> SymbolMarket:
    if not SYMBOL_PARAM.match(raw):
        raise ApiError(
            400,
            -1100,
            "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.",
        )
    sym = market.symbols.get(raw)
    if sym is None:
        raise ApiError(400, -1121, "Invalid symbol.")
    return sym


def int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ApiError(
            400,
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    return int(raw)


def status_code_param(request: web.Request) -> int:
    """The admin API's ``status`` (an HTTP status to serve a document with)."""
    raw = request.query.get("status", "200")
    if not raw.isdigit() or not 100 <= int(raw) <= 599:
        raise ApiError(400, -1, "status must be an HTTP status code")
    return int(raw)


async def json_body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, -1, f"body is not JSON: {exc}") from None

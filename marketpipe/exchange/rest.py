"""Binance Spot REST market-data client (aiohttp): depth, exchangeInfo, ticker/24hr, trades.

Every request passes the process-wide :class:`WeightGate` first; 429/418 close the gate for
``Retry-After``; 5xx, timeouts and connection errors are retried with backoff; ``{"code","msg"}``
error bodies become :class:`ExchangeError`. Prices and quantities stay the exchange's strings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import msgspec
import orjson

from marketpipe.exchange.backoff import Backoff
from marketpipe.exchange.weights import (
    EXCHANGE_INFO_WEIGHT,
    TRADES_WEIGHT,
    WeightGate,
    depth_weight,
    ticker_24hr_weight,
)
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import BAD_INPUT, REST_REQUESTS, REST_WEIGHT_SPENT, REST_WEIGHT_USED

log = get_logger(__name__)

T = TypeVar("T")

RATE_LIMIT_STATUSES = frozenset({418, 429})


class ExchangeError(Exception):
    """The exchange answered with an error: ``code``/``msg`` from its body, ``status`` HTTP."""

    def __init__(self, code: int, msg: str, status: int) -> None:
        super().__init__(f"exchange error {code} (HTTP {status}): {msg}")
        self.code, self.msg, self.status = code, msg, status


class ExchangeUnavailable(Exception):
    """Retries ran out (server errors, timeouts, rate limits or an unreadable reply)."""


class DepthSnapshot(msgspec.Struct, frozen=True, rename={"last_update_id": "lastUpdateId"}):
    last_update_id: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


class SymbolInfo(
    msgspec.Struct, frozen=True, rename={"base_asset": "baseAsset", "quote_asset": "quoteAsset"}
):
    symbol: str
    status: str
    base_asset: str
    quote_asset: str


class ExchangeInfo(msgspec.Struct, frozen=True):
    symbols: list[SymbolInfo]

    def trading_symbols(self, quote_assets: list[str]) -> list[str]:
        quotes = {q.upper() for q in quote_assets}
        return [s.symbol for s in self.symbols if s.status == "TRADING" and s.quote_asset in quotes]


class _ErrorBody(msgspec.Struct):
    code: int
    msg: str


_depth_decoder = msgspec.json.Decoder(DepthSnapshot)
_info_decoder = msgspec.json.Decoder(ExchangeInfo)
_error_decoder = msgspec.json.Decoder(_ErrorBody)
_list_decoder = msgspec.json.Decoder(list[dict[str, Any]])


class ExchangeRest:
    """One per process (the weight gate is the process's view of the IP's budget)."""

    def __init__(
        self,
        base_url: str,
        *,
        gate: WeightGate | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_seconds: float = 10.0,
        max_attempts: int = 5,
        backoff_cap_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.gate = gate or WeightGate()
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_attempts = max_attempts
        self._backoff_cap = backoff_cap_seconds
        self.clock = clock

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ExchangeRest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def depth(self, symbol: str, limit: int = 5000) -> DepthSnapshot:
        params = {"symbol": symbol, "limit": str(limit)}
        body = await self._get("depth", params, depth_weight(limit))
        return self._decode("depth", body, _depth_decoder.decode)

    async def exchange_info(self) -> ExchangeInfo:
        body = await self._get("exchangeInfo", {}, EXCHANGE_INFO_WEIGHT)
        return self._decode("exchangeInfo", body, _info_decoder.decode)

    async def ticker_24hr(self, symbols: list[str] | None = None) -> list[dict[str, Any]]:
        """REST-shaped 24 h tickers (``symbol``, ``lastPrice``, ...); all pairs when ``None``."""
        params = {} if symbols is None else {"symbols": orjson.dumps(symbols).decode()}
        weight = ticker_24hr_weight(None if symbols is None else len(symbols))
        body = await self._get("ticker/24hr", params, weight)
        return self._decode("ticker/24hr", body, _list_decoder.decode)

    async def trades(self, symbol: str, limit: int = 500) -> list[dict[str, Any]]:
        """Recent trades, oldest first, as the exchange sends them."""
        body = await self._get("trades", {"symbol": symbol, "limit": str(limit)}, TRADES_WEIGHT)
        return self._decode("trades", body, _list_decoder.decode)

    def _decode(self, endpoint: str, body: bytes, decode: Callable[[bytes], T]) -> T:
        try:
            return decode(body)
        except msgspec.DecodeError as exc:  # also covers ValidationError (wrong shape)
            BAD_INPUT.labels(source="rest", kind=endpoint).inc()
            log.warning("rest_bad_reply", endpoint=endpoint, error=str(exc), head=body[:200])
            raise ExchangeUnavailable(f"{endpoint}: unreadable reply: {exc}") from exc

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _wait_for_gate(self, weight: int) -> None:
        while True:
            wait = self.gate.try_acquire(weight, self.clock())
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def _get(self, endpoint: str, params: dict[str, str], weight: int) -> bytes:
        url = f"{self.base_url}/api/v3/{endpoint}"
        backoff = Backoff(base=0.2, cap=self._backoff_cap)
        last_problem = ""
        spent = REST_WEIGHT_SPENT.labels(endpoint=endpoint)
        for _attempt in range(self._max_attempts):
            await self._wait_for_gate(weight)
            spent.inc(weight)
            try:
                async with self._session_or_new().get(
                    url, params=params, timeout=self._timeout
                ) as resp:
                    body = await resp.read()
                    status = resp.status
                    self._note_used_weight(resp.headers)
                    if status in RATE_LIMIT_STATUSES:
                        retry_after = _seconds(resp.headers.get("Retry-After"))
                        self.gate.on_rate_limited(retry_after, self.clock())
                        log.warning(
                            "rest_rate_limited",
                            endpoint=endpoint,
                            status=status,
                            retry_after=retry_after,
                        )
            except (aiohttp.ClientError, TimeoutError) as exc:
                REST_REQUESTS.labels(endpoint=endpoint, status="error").inc()
                last_problem = f"{type(exc).__name__}: {exc}"
                log.warning("rest_request_failed", endpoint=endpoint, error=last_problem)
                await asyncio.sleep(backoff.next_delay())
                continue
            REST_REQUESTS.labels(endpoint=endpoint, status=str(status)).inc()
            if status == 200:
                return body
            if status in RATE_LIMIT_STATUSES:
                last_problem = f"HTTP {status}"
                continue  # the gate holds the next attempt until Retry-After has passed
            if status >= 500:
                last_problem = f"HTTP {status}"
                log.warning("rest_server_error", endpoint=endpoint, status=status)
                await asyncio.sleep(backoff.next_delay())
                continue
            raise _error_from(status, body)
        raise ExchangeUnavailable(
            f"{endpoint}: gave up after {self._max_attempts} attempts: {last_problem}"
        )

    def _note_used_weight(self, headers: Any) -> None:
        used = headers.get("X-MBX-USED-WEIGHT-1M")
        if used is None:
            return
        try:
            value = int(used)
        except ValueError:
            BAD_INPUT.labels(source="rest", kind="weight_header").inc()
            return
        self.gate.observe_used(value, self.clock())
        REST_WEIGHT_USED.set(value)


def _seconds(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _error_from(status: int, body: bytes) -> ExchangeError:
    try:
        err = _error_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return ExchangeError(0, body[:200].decode(errors="replace"), status)
    return ExchangeError(err.code, err.msg, status)

"""Which pairs a service handles: the assets API (DESIGN §5), or the exchange's own list.

``parse_assets`` is pure. :class:`AssetsSource` polls and calls ``on_universe(universe)`` whenever
the set changes, so services start pairs that appear and stop pairs that vanish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from marketpipe.config import Settings, normalise_symbol
from marketpipe.exchange.rest import ExchangeError, ExchangeInfo, ExchangeRest, ExchangeUnavailable
from marketpipe.sources.polling import PayloadRejected, Poller, get_json

SOURCE = "assets"


@dataclass(frozen=True)
class Universe:
    priority: tuple[str, ...]
    others: tuple[str, ...]

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.priority + self.others

    def is_priority(self, symbol: str) -> bool:
        return symbol in self.priority


def _symbol(name: Any) -> str:
    if not isinstance(name, str):
        raise PayloadRejected(f"pair name {name!r} is not a string")
    symbol = normalise_symbol(name)
    if not symbol.isalnum():
        raise PayloadRejected(f"pair name {name!r} is not a pair")
    return symbol


def _names(value: Any, key: str) -> list[str]:
    if not isinstance(value, list):
        raise PayloadRejected(f"{key!r} must be a list")
    return [_symbol(v) for v in value]


def make_universe(priority: Iterable[str], others: Iterable[str], cap: int = 0) -> Universe:
    """Deduplicated, priority first; a pair listed in both counts as priority; cap 0: none."""
    first = list(dict.fromkeys(priority))
    rest = [s for s in dict.fromkeys(others) if s not in set(first)]
    if cap > 0:
        first, rest = first[:cap], rest[: max(0, cap - len(first))]
    return Universe(tuple(first), tuple(rest))


def parse_assets(payload: Any) -> Universe:
    """``{"priority": [...], "others": [...]}`` or ``{"result": [{"name": ...}, ...]}``."""
    if not isinstance(payload, dict):
        raise PayloadRejected("assets payload must be a JSON object")
    if "priority" in payload or "others" in payload:
        universe = make_universe(
            _names(payload.get("priority", []), "priority"),
            _names(payload.get("others", []), "others"),
        )
    elif "result" in payload:
        rows = payload["result"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise PayloadRejected("'result' must be a list of objects")
        universe = make_universe([], [_symbol(r.get("name")) for r in rows])
    else:
        raise PayloadRejected("expected 'priority'/'others' or 'result'")
    if not universe.symbols:
        # An empty list is far likelier an upstream fault than a wish to stop every pair.
        raise PayloadRejected("assets payload lists no pairs")
    return universe


def universe_from_exchange(info: ExchangeInfo, settings: Settings) -> Universe:
    """Configured priority pairs that trade, then every trading pair of the quote assets."""
    trading = info.trading_symbols(settings.quote_assets)
    all_trading = {s.symbol for s in info.symbols if s.status == "TRADING"}
    priority = [s for s in settings.priority_symbols if s in all_trading]
    return make_universe(priority, sorted(trading), settings.max_symbols)


class AssetsSource:
    """Polls ``ASSETS_URL`` or, without one, the exchange's ``exchangeInfo``."""

    def __init__(
        self,
        settings: Settings,
        rest: ExchangeRest,
        on_universe: Callable[[Universe], None],
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._settings = settings
        self._rest = rest
        self._session = session
        self.poller: Poller[Universe] = Poller(
            SOURCE, self._fetch, self._parse, on_universe, settings.assets_poll_seconds
        )

    @property
    def universe(self) -> Universe | None:
        return self.poller.value

    async def _fetch(self) -> Any:
        if not self._settings.assets_url:
            try:
                return await self._rest.exchange_info()
            except (ExchangeError, ExchangeUnavailable) as exc:
                raise OSError(f"exchangeInfo: {exc}") from exc
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return await get_json(self._session, self._settings.assets_url)

    def _parse(self, payload: Any) -> Universe:
        if isinstance(payload, ExchangeInfo):
            return universe_from_exchange(payload, self._settings)
        return parse_assets(payload)

    async def run(self) -> None:
        try:
            await self.poller.run()
        finally:
            if self._session is not None:
                await self._session.close()

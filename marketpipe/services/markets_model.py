"""The whole-market view behind ``markets.SNAPSHOT`` / ``markets.DATA`` (pure, no I/O).

Tickers come in from the REST ``ticker/24hr`` snapshot and the per-pair ``@ticker`` streams
(:meth:`MarketsModel.apply`; an older ticker than the one held is ignored, so the REST snapshot
and the streams may race). The set of pairs is the tradable universe (:meth:`set_universe`:
pairs that leave it, delisted or halted, leave every later message). Once a second
:meth:`tick` gives the snapshot of all pairs and the delta: the pairs whose last price ``c``
changed since the previous tick, or that are new since then (``None`` when nothing changed).

Messages are objects keyed by symbol, each value a ticker message
(:func:`marketpipe.services.feed_messages.ticker_message`), built by joining the per-pair bytes
already encoded for Redis, so a tick costs one join, not a re-encoding of every pair.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from marketpipe.exchange.messages import Ticker
from marketpipe.services.feed_messages import ticker_message


@dataclass(frozen=True, slots=True)
class Tick:
    snapshot: bytes | None  # None only while no pair has a ticker yet
    data: bytes | None  # None: nothing changed since the previous tick
    changed: tuple[str, ...]


class MarketsModel:
    def __init__(self) -> None:
        self._universe: set[str] | None = None  # None: not known yet, accept every pair
        self._event_times: dict[str, int] = {}
        self._prices: dict[str, str] = {}
        self._messages: dict[str, bytes] = {}
        self._ticked_prices: dict[str, str] = {}  # last price per pair at the previous tick

    def __len__(self) -> int:
        return len(self._messages)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._messages

    @property
    def symbols(self) -> set[str]:
        return set(self._messages)

    def message(self, symbol: str) -> bytes | None:
        return self._messages.get(symbol)

    def set_universe(self, symbols: Iterable[str]) -> list[str]:
        """The tradable pairs now; returns the pairs dropped from the view."""
        self._universe = set(symbols)
        gone = [s for s in self._messages if s not in self._universe]
        for symbol in gone:
            del self._messages[symbol]
            del self._prices[symbol]
            del self._event_times[symbol]
            self._ticked_prices.pop(symbol, None)
        return gone

    def missing(self) -> list[str]:
        """Pairs of the universe without a ticker yet (to fetch from REST)."""
        if self._universe is None:
            return []
        return sorted(self._universe.difference(self._messages))

    def apply(self, ticker: Ticker) -> bytes | None:
        """Take ``ticker``; returns its message when it is now the pair's current one."""
        symbol, event_time = ticker.s, ticker.E
        if self._universe is not None and symbol not in self._universe:
            return None
        if event_time < self._event_times.get(symbol, -1):
            return None
        message = ticker_message(ticker)
        self._event_times[symbol] = event_time
        self._prices[symbol] = ticker.c
        self._messages[symbol] = message
        return message

    def tick(self) -> Tick:
        ticked = self._ticked_prices
        changed = tuple(s for s, price in self._prices.items() if ticked.get(s) != price)
        self._ticked_prices = dict(self._prices)
        snapshot = _join(self._messages.items()) if self._messages else None
        data = _join((s, self._messages[s]) for s in changed) if changed else None
        return Tick(snapshot, data, changed)


def _join(items: Iterable[tuple[str, bytes]]) -> bytes:
    return b"{" + b",".join(b"%s:%s" % (orjson.dumps(s), m) for s, m in items) + b"}"

"""Another market the simulator can serve instead of its own model (a recording, replayed).

With a source, the simulator's clock publishes the source's events on their streams (through
the same fault plan as its own diffs) and its REST depth answers with the source's books; the
rest of the simulator (subscriptions, limits, faults, admin API) is unchanged. The symbols are
listed in the simulator's market so that exchangeInfo, the assets API and tickers name them.
"""

from __future__ import annotations

from typing import Any, Protocol


class SourceBook(Protocol):
    def depth(self, limit: int | None = None) -> dict[str, Any]:
        """``{"lastUpdateId", "bids", "asks"}``, at most ``limit`` levels a side."""
        ...


class ExchangeSource(Protocol):
    def symbols(self) -> list[str]: ...

    def due(self, now: float) -> list[tuple[str, str, bytes]]:
        """The events due by ``now`` (the loop's clock): ``(symbol, stream, payload)``."""
        ...

    def book(self, symbol: str) -> SourceBook | None:
        """The symbol's book at the point the events have reached (None: not known yet)."""
        ...

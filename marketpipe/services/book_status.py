"""What consumers see of each book's state (syncing / live / resyncing + reason), pure.

Published on ``status.orderbook.<SYMBOL>`` at each change (and again periodically so a late
subscriber learns every state). The subject sits outside ``orderbook.`` on purpose: consumers
subscribed to ``orderbook.*`` or ``orderbook.>`` expect book messages only and must not receive
status messages under a symbol-like token.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

SUBJECT_ROOT = "status.orderbook"
LIVE = "live"


def status_subject(symbol: str) -> str:
    return f"{SUBJECT_ROOT}.{symbol}"


@dataclass(frozen=True, slots=True)
class BookStatus:
    symbol: str
    state: str  # syncing | live | resyncing
    reason: str | None
    since_ms: int  # wall clock when the book entered this state

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "symbol": self.symbol,
                "state": self.state,
                "reason": self.reason,
                "since": self.since_ms,
            }
        )


class StatusBoard:
    """The current state of every tracked book; tells which changes are news."""

    def __init__(self) -> None:
        self._status: dict[str, BookStatus] = {}
        self.live_count = 0

    def update(self, symbol: str, state: str, reason: str | None, now_ms: int) -> BookStatus | None:
        """Record a state; returns the new status when it differs from the last one."""
        old = self._status.get(symbol)
        if old is not None and old.state == state and old.reason == reason:
            return None
        status = BookStatus(symbol, state, reason, now_ms)
        self._status[symbol] = status
        self.live_count += (state == LIVE) - (old is not None and old.state == LIVE)
        return status

    def remove(self, symbol: str) -> None:
        old = self._status.pop(symbol, None)
        if old is not None and old.state == LIVE:
            self.live_count -= 1

    def get(self, symbol: str) -> BookStatus | None:
        return self._status.get(symbol)

    def all(self) -> list[BookStatus]:
        return list(self._status.values())

    def __len__(self) -> int:
        return len(self._status)

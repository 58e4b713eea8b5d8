"""Audit of a live book against a fresh REST snapshot at the same update id, pure.

The live book and a snapshot can only be compared when the book stands at exactly the
snapshot's ``lastUpdateId``: the service asks for a snapshot, then compares when the book
reaches that id (at once if it is already there). A book that steps over the id inside one
diff (``U <= lastUpdateId < u``) or is already past it cannot be compared: that attempt is
dropped as inconclusive and a later one tries again.

Only the window the snapshot covers is compared: with a snapshot of ``limit`` levels a side, the
live levels priced from the best down to the snapshot's last level (bids) or up to it (asks);
when the snapshot returned fewer than ``limit`` levels it covers its whole side.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

Level = tuple[str, str]


@dataclass(frozen=True, slots=True)
class AuditSnapshot:
    last_update_id: int
    limit: int
    bids: Sequence[Level]
    asks: Sequence[Level]


@dataclass(frozen=True, slots=True)
class AuditResult:
    symbol: str
    last_update_id: int
    compared: int  # levels in the window, on either side of the comparison
    matching: int  # of those, present on both sides with the same quantity

    @property
    def ratio(self) -> float:
        return self.matching / self.compared if self.compared else 1.0


class Verdict(enum.Enum):
    COMPARE = "compare"  # the book stands at the snapshot's id now
    WAIT = "wait"  # the book is behind: compare when it reaches the id
    MISSED = "missed"  # the book is past the id: nothing to compare


def _window(snapshot_side: Sequence[Level], limit: int) -> Decimal | None:
    """The worst price the snapshot vouches for on a side (None: the whole side)."""
    if len(snapshot_side) < limit:
        return None
    return Decimal(snapshot_side[-1][0])


def _side_match(
    snapshot_side: Sequence[Level], live_side: Iterable[Level], limit: int, bids: bool
) -> tuple[int, int]:
    edge = _window(snapshot_side, limit)
    expected = {Decimal(p): q for p, q in snapshot_side}
    compared = len(expected)
    matching = 0
    for price, qty in live_side:  # best first: stop at the first level beyond the window
        key = Decimal(price)
        if edge is not None and (key < edge if bids else key > edge):
            break
        want = expected.get(key)
        if want is None:
            compared += 1
        elif Decimal(want) == Decimal(qty):
            matching += 1
    return compared, matching


def compare(
    symbol: str,
    snapshot: AuditSnapshot,
    live_bids: Iterable[Level],
    live_asks: Iterable[Level],
) -> AuditResult:
    """Compare live levels (each side best first) with the snapshot, inside its window."""
    bid_total, bid_match = _side_match(snapshot.bids, live_bids, snapshot.limit, bids=True)
    ask_total, ask_match = _side_match(snapshot.asks, live_asks, snapshot.limit, bids=False)
    return AuditResult(
        symbol, snapshot.last_update_id, bid_total + ask_total, bid_match + ask_match
    )


class AuditBook:
    """Snapshots waiting for their book to reach their update id, by symbol."""

    def __init__(self) -> None:
        self._waiting: dict[str, AuditSnapshot] = {}

    def offer(self, symbol: str, snapshot: AuditSnapshot, book_update_id: int) -> Verdict:
        """A snapshot arrived; the live book stands at ``book_update_id``."""
        if book_update_id == snapshot.last_update_id:
            return Verdict.COMPARE
        if book_update_id > snapshot.last_update_id:
            return Verdict.MISSED
        self._waiting[symbol] = snapshot
        return Verdict.WAIT

    def advanced(self, symbol: str, book_update_id: int) -> tuple[Verdict, AuditSnapshot | None]:
        """The book of ``symbol`` moved to ``book_update_id``: is a waiting snapshot due?"""
        snapshot = self._waiting.get(symbol)
        if snapshot is None or book_update_id < snapshot.last_update_id:
            return Verdict.WAIT, snapshot
        del self._waiting[symbol]
        if book_update_id == snapshot.last_update_id:
            return Verdict.COMPARE, snapshot
        return Verdict.MISSED, snapshot

    def cancel(self, symbol: str) -> None:
        """The book left sync or the symbol went away: its pending audit is void."""
        self._waiting.pop(symbol, None)

    def waiting(self, symbol: str) -> bool:
        return symbol in self._waiting

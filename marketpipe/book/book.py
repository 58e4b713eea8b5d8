"""An exact price-level order book: the exchange's strings in, the same bytes out.

Each side is a :class:`~marketpipe.book.side.BookSide` (compiled; its docstring describes the
structure and the window that keeps levels beyond the snapshot from rotting). A diff's numbers are
checked and converted in one C-level pass (:func:`~marketpipe.book.levels.checked_numbers`), not by
``float()`` per level.

The exchange's diffs only report changes within the top ``DIFF_HORIZON`` levels of a side, so a
side's window must stay inside them: after a diff a side holds fewer than ``DIFF_HORIZON`` levels
(more, and the deepest could change unseen; exactly that many on a complete side, and a new level
just beyond would go unseen).
"""

from __future__ import annotations

from collections.abc import Sequence

from marketpipe.book.levels import checked_numbers
from marketpipe.book.side import CHUNK, BookSide

# Diffs report changes within the top 5000 levels of a side only (the simulator does exactly this;
# 5000 is also the deepest snapshot): a window must end above that.
DIFF_HORIZON = 5000


class OrderBook:
    """Bids and asks of one symbol. ``apply`` raises :class:`BadLevel` part-way through a diff;
    the caller must then discard the book (the sync engine does)."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.clear()

    def load(
        self,
        bids: Sequence[Sequence[str]],
        asks: Sequence[Sequence[str]],
        limit: int | None,
    ) -> None:
        """Replace the whole book by a snapshot that was asked for ``limit`` levels a side."""
        bid_numbers, ask_numbers = checked_numbers(bids, asks)
        self.bids.load(bids, bid_numbers, limit, DIFF_HORIZON)
        self.asks.load(asks, ask_numbers, limit, DIFF_HORIZON)

    def apply(self, bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]) -> None:
        """Set (not add) each level's quantity; a zero quantity removes the level."""
        bid_numbers, ask_numbers = checked_numbers(bids, asks)
        if bids:  # diffs are often one-sided
            self.bids.apply(bids, bid_numbers)
        if asks:
            self.asks.apply(asks, ask_numbers)

    def clear(self) -> None:
        self.bids = BookSide(is_ask=False, chunk=CHUNK)
        self.asks = BookSide(is_ask=True, chunk=CHUNK)

    def is_crossed(self) -> bool:
        best_bid, best_ask = self.bids.best_key(), self.asks.best_key()
        return best_bid is not None and best_ask is not None and best_bid >= -best_ask

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)

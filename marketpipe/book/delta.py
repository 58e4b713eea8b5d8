"""Incremental books (DESIGN §10), pure: the checksum of a view, the delta between consecutive
published views, and a side of levels that deltas are applied to.

The publisher keeps the levels of the view it last published per pair
(:class:`~marketpipe.book.side.PublishedView`: each level's key and where its JSON sits in the
message) and the next view's delta is a merge of the two level lists in C: a level whose JSON
changed or that is new is sent as it is now, a level gone from the view as ``["price","0"]``.
The levels come from the messages themselves, so a delta is always the difference of what went
out, whatever happened to the book in between (a resync, a change of ``Depth``).

Consumers keep :class:`ViewSide` per side: levels ordered by ``float(price)`` (exact for the
exchange's prices, see ``levels.py``), with the exchange's strings. Applying a delta to the view
it chains from gives the new view exactly: same levels, same strings, same order.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

from sortedcontainers import SortedDict

from marketpipe.book.side import PublishedView
from marketpipe.book.sync import BookSync
from marketpipe.book.view import ViewSettings, publish_view

CHECKSUM_LEVELS = 25
REMOVED = "0"  # the quantity of a level that a delta removes


def checksum(bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]) -> int:
    """DESIGN §10: crc32 of ``bid0:ask0:bid1:ask1:...`` (``price:quantity`` each) over the best
    25 levels a side, a side's missing level skipped."""
    parts: list[str] = []
    for i in range(min(CHECKSUM_LEVELS, max(len(bids), len(asks)))):
        if i < len(bids):
            parts.append(f"{bids[i][0]}:{bids[i][1]}")
        if i < len(asks):
            parts.append(f"{asks[i][0]}:{asks[i][1]}")
    return zlib.crc32(":".join(parts).encode())


class ViewPublisher:
    """One pair's published views: renders each with its delta from the previous one published.

    Only a view that went out may be chained from: the caller reports it with :meth:`published`
    (a follower's views never go out, so it never computes a delta), and :meth:`forget` starts
    a new chain (a new term: its first message must be a full view of its own).
    """

    __slots__ = ("_last", "_last_update_id", "_rendered", "_rendered_update_id")

    def __init__(self) -> None:
        self._last: PublishedView | None = None
        self._last_update_id = 0
        self._rendered: PublishedView | None = None
        self._rendered_update_id = 0

    def render(
        self, sync: BookSync, settings: ViewSettings, seq: int, epoch: int, shard: int = 0
    ) -> tuple[bytes, bytes | None] | None:
        """(the full view, its delta from the view last published or None: nothing published
        in this term yet) of a live book; None when the book's window no longer covers the view
        (``BookSync.on_window_lost``)."""
        view = publish_view(sync, settings, seq, epoch, shard)
        if view is None:
            return None
        self._rendered, self._rendered_update_id = view, sync.last_update_id
        last = self._last
        if last is None:
            return view.message, None
        return view.message, view.delta_message(last, self._last_update_id)

    def published(self) -> None:
        """The view last rendered went out: the next delta chains from it."""
        if self._rendered is not None:
            self._last, self._last_update_id = self._rendered, self._rendered_update_id
            self._rendered = None

    def forget(self) -> None:
        """Nothing published may be chained from any more (a new term)."""
        self._last = self._rendered = None


class ViewSide:
    """One side of a consumer's view, best first; deltas are applied to it."""

    __slots__ = ("_levels", "_sign")

    def __init__(self, is_ask: bool, levels: Iterable[Sequence[str]] = ()) -> None:
        self._sign = 1.0 if is_ask else -1.0  # the best level has the smallest key
        self._levels: SortedDict[float, tuple[str, str]] = SortedDict()
        self.apply(levels)

    def apply(self, changes: Iterable[Sequence[str]]) -> None:
        """Set each level's quantity; ``"0"`` removes the level."""
        levels, sign = self._levels, self._sign
        for price, quantity in changes:
            key = sign * float(price)
            if quantity == REMOVED:
                levels.pop(key, None)
            else:
                levels[key] = (price, quantity)

    def levels(self) -> list[tuple[str, str]]:
        """``[(price, quantity), ...]``, best first."""
        return list(self._levels.values())

    def best(self) -> tuple[str, str] | None:
        return self._levels.peekitem(0)[1] if self._levels else None

    def within(self, limit: float) -> list[tuple[str, str]]:
        """The levels from the best one to ``limit`` inclusive (a price at or above it for bids,
        at or below it for asks)."""
        last = self._levels.bisect_right(self._sign * limit)
        return list(self._levels.values()[:last])

    def __len__(self) -> int:
        return len(self._levels)

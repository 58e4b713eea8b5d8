"""The published view of a live book (DESIGN §2 and §5), pure: spread filter, depth, JSON bytes.

With mid = (best bid + best ask) / 2, bids priced at or above mid * (1 - MaxSpreadPct/100) and
asks at or below mid * (1 + MaxSpreadPct/100) are kept, then the best ``Depth`` a side. The
bounds are computed exactly with Decimal; the float keys of the book are only used to find them:
float rounding is monotonic, so a key strictly on one side of ``float(bound)`` is on that side of
the bound, and the single level whose key equals ``float(bound)`` (keys are unique) is compared
exactly. A book with an empty side has no mid: its view is the best ``Depth`` levels unfiltered.

Levels are the book's pre-encoded JSON (the exchange's strings, byte-identical), kept in
contiguous blobs, so a message is one allocation and a few copies
(``side.render_view_message``); it ends with the view's ``checksum`` (DESIGN §10).

A side is only known down to its window's floor (``book.py``). When the market has walked away
from the snapshot, the view may need levels beyond the floor that the book has never seen: then
there is no view (None), rather than a short one that looks complete. A side's view is known when
it has ``Depth`` levels inside the bound, or its window reaches the bound.
"""

from __future__ import annotations

import functools
from decimal import Context, Decimal
from typing import Protocol

import orjson

from marketpipe.book.book import OrderBook
from marketpipe.book.levels import INF, price_of
from marketpipe.book.side import BookSide, PublishedView, render_view_message
from marketpipe.book.sync import BookSync

# Prices have at most 15 digits and percentages are short: 40 digits keep every bound exact.
_EXACT = Context(prec=40)
_HUNDRED = Decimal(100)
_TWO = Decimal(2)


class ViewSettings(Protocol):
    """Per-symbol view settings (``marketpipe.sources.settings.SymbolSettings`` fits)."""

    @property
    def max_spread_pct(self) -> float: ...
    @property
    def depth(self) -> int: ...


def spread_bounds(best_bid: str, best_ask: str, max_spread_pct: float) -> tuple[Decimal, Decimal]:
    """(lowest bid kept, highest ask kept), exact. ``repr`` of the percentage is the decimal
    the settings were written with (``5.5``, not its binary approximation)."""
    low, high, _, _ = _bounds(best_bid, best_ask, max_spread_pct)
    return low, high


@functools.lru_cache(maxsize=8192)  # the top of a book moves less often than it is published
def _bounds(
    best_bid: str, best_ask: str, max_spread_pct: float
) -> tuple[Decimal, Decimal, float, float]:
    """The exact bounds and their keys in each side's order (bids: the price, asks: minus it)."""
    ctx = _EXACT
    mid = ctx.divide(ctx.add(Decimal(best_bid), Decimal(best_ask)), _TWO)
    share = ctx.divide(Decimal(repr(max_spread_pct)), _HUNDRED)
    low, high = ctx.multiply(mid, ctx.subtract(1, share)), ctx.multiply(mid, ctx.add(1, share))
    return low, high, float(low), -float(high)


def _inside(side: BookSide, bound: Decimal, key: float, depth: int) -> int | None:
    """How many of the side's best levels the view shows: at most ``depth``, all inside
    ``bound`` (None: unknown); ``key`` is the bound's key in the side's order."""
    count, tie = side.levels_from(key)
    reaches = side.floor < key  # the window goes past the bound
    if tie is not None:
        price = Decimal(price_of(tie))
        if (price > bound) if side.is_ask else (price < bound):
            count -= 1
        # the tie is the floor level itself: the window reaches the bound if the level does
        reaches = reaches or (
            side.floor == key and (price >= bound if side.is_ask else price <= bound)
        )
    if count < depth and not reaches:
        return None
    return min(count, depth)


def _best(side: BookSide, depth: int) -> int | None:
    """How many of the side's best levels the view shows, unfiltered (None: unknown)."""
    if side.count < depth and side.floor != -INF:
        return None
    return min(side.count, depth)


def book_json(book: OrderBook, max_spread_pct: float, depth: int) -> tuple[bytes, bytes] | None:
    """The JSON bodies (without brackets) of the bids and asks arrays of the view; None when the
    book's window no longer covers it."""
    counts = view_counts(book, max_spread_pct, depth)
    if counts is None:
        return None
    return book.bids.best_json(counts[0]), book.asks.best_json(counts[1])


def view_counts(book: OrderBook, max_spread_pct: float, depth: int) -> tuple[int, int] | None:
    """How many bids and asks the view shows; None when the book's window no longer covers it
    (the caller resyncs the book)."""
    bids, asks = book.bids, book.asks
    if not (bids.count and asks.count):
        bid_count, ask_count = _best(bids, depth), _best(asks, depth)
    else:
        low, high, low_key, high_key = _bounds(bids.best_price(), asks.best_price(), max_spread_pct)
        bid_count, ask_count = (
            _inside(bids, low, low_key, depth),
            _inside(asks, high, high_key, depth),
        )
    return None if bid_count is None or ask_count is None else (bid_count, ask_count)


def render_view(
    sync: BookSync, settings: ViewSettings, seq: int, epoch: int, shard: int = 0
) -> bytes | None:
    """The ``orderbook.<SYMBOL>`` message of a live book (the caller checks it is live); None
    when the book's window no longer covers the view (``BookSync.on_window_lost``)."""
    view = publish_view(sync, settings, seq, epoch, shard)
    return None if view is None else view.message


def publish_view(
    sync: BookSync, settings: ViewSettings, seq: int, epoch: int, shard: int = 0
) -> PublishedView | None:
    """As :func:`render_view`, with the levels of the message kept for the next delta
    (``marketpipe.book.delta``)."""
    book = sync.book
    counts = view_counts(book, settings.max_spread_pct, settings.depth)
    if counts is None:
        return None
    head = b'{"symbol":%s,"lastUpdateId":%d,"E":%d,"seq":%d,"epoch":%d,"shard":%d,"bids":[' % (
        orjson.dumps(sync.symbol),
        sync.last_update_id,
        sync.last_event_time,
        seq,
        epoch,
        shard,
    )
    return render_view_message(head, book.bids, counts[0], book.asks, counts[1])

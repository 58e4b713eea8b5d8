"""A consumer's local book from full views and deltas (DESIGN §10), pure: no I/O, no clock.

:class:`BookKeeper` takes the messages of one symbol as they arrive (``on_view`` for a full view,
from ``orderbook.<SYMBOL>``, Redis or a gateway ``depth@`` snapshot; ``on_delta`` for a delta) and
returns what happened: a new :class:`Book`, a resync (the book is dropped, the shell must fetch a
full view), or nothing (a message ignored, counted). It checks, in this order:

- ``epoch`` older than one already seen for the symbol: dropped (DESIGN §8);
- a newer ``epoch`` in a delta: the new leader's deltas chain only from its own views, so the
  book resyncs (``epoch``);
- ``seq`` not above the book's: dropped (a duplicate, or older than the snapshot);
  ``seq`` more than one above: something was missed, resync (``gap``);
- ``prevUpdateId`` other than the book's ``lastUpdateId``: resync (``chain``);
- the checksum of the book after the delta (or of a full view) other than the message's: resync
  (``checksum``).

While it waits for a full view it keeps the deltas that arrive (a bounded few) and applies the
ones that follow the view it gets, so a view that arrives after its successors' deltas still
leads to a current book.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from marketpipe.book.delta import ViewSide, checksum

Level = tuple[str, str]
PENDING_DELTAS = 64  # deltas kept while waiting for a full view (~6 s of one pair at 100 ms)


@dataclass(frozen=True, slots=True)
class Book:
    """One symbol's book as published: levels best first, the exchange's strings."""

    symbol: str
    last_update_id: int
    event_time: int  # the exchange's E, ms
    epoch: int
    seq: int
    checksum: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]

    @property
    def best_bid(self) -> Level | None:
        return self.bids[0] if self.bids else None

    @property
    def best_ask(self) -> Level | None:
        return self.asks[0] if self.asks else None

    @property
    def mid(self) -> Decimal | None:
        """(best bid + best ask) / 2, exact; None when a side is empty."""
        if not (self.bids and self.asks):
            return None
        return (Decimal(self.bids[0][0]) + Decimal(self.asks[0][0])) / 2

    @property
    def spread(self) -> Decimal | None:
        if not (self.bids and self.asks):
            return None
        return Decimal(self.asks[0][0]) - Decimal(self.bids[0][0])

    def depth_within(self, pct: float) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """The bids and asks priced within ``pct`` percent of the mid (inclusive)."""
        mid = self.mid
        if mid is None:
            return (), ()
        share = Decimal(repr(pct)) / 100
        return self.bids_from(mid * (1 - share)), self.asks_to(mid * (1 + share))

    def bids_from(self, price: Decimal | str) -> tuple[Level, ...]:
        """The bids priced at or above ``price``, best first."""
        floor = Decimal(price)
        keys = [-Decimal(p) for p, _ in self.bids]
        return self.bids[: bisect.bisect_right(keys, -floor)]

    def asks_to(self, price: Decimal | str) -> tuple[Level, ...]:
        """The asks priced at or below ``price``, best first."""
        ceiling = Decimal(price)
        keys = [Decimal(p) for p, _ in self.asks]
        return self.asks[: bisect.bisect_right(keys, ceiling)]

    def volume(self, levels: Sequence[Level]) -> Decimal:
        """The summed quantity of ``levels`` (e.g. ``book.volume(book.depth_within(1)[0])``)."""
        return sum((Decimal(q) for _, q in levels), Decimal(0))


@dataclass(frozen=True, slots=True)
class Updated:
    book: Book


@dataclass(frozen=True, slots=True)
class Resync:
    """The book was dropped: fetch a full view. ``reason``: epoch, gap, chain, checksum, or
    what the shell said when it reset the book (reconnect)."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message that changed nothing. ``reason``: older_epoch, stale, waiting."""

    reason: str


Outcome = Updated | Resync | Ignored


@dataclass
class BookStats:
    """What one symbol's keeper has done, for the client's counters."""

    views: int = 0
    deltas: int = 0
    updates: int = 0
    checksums_verified: int = 0
    resyncs: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)


class BookKeeper:
    """One symbol's local book (see the module's docstring)."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.stats = BookStats()
        self.book: Book | None = None
        self._bids = ViewSide(is_ask=False)
        self._asks = ViewSide(is_ask=True)
        self._newest_epoch = -1
        self._pending: list[Mapping[str, Any]] = []

    @property
    def waiting(self) -> bool:
        """No book: the shell should be fetching a full view."""
        return self.book is None

    def on_view(self, view: Mapping[str, Any]) -> list[Outcome]:
        """A full view (``orderbook.<SYMBOL>``, Redis, or a gateway snapshot)."""
        self.stats.views += 1
        epoch, seq = view["epoch"], view["seq"]
        if epoch < self._newest_epoch:
            return [self._ignore("older_epoch")]
        book = self.book
        if book is not None and epoch == book.epoch and seq <= book.seq:
            return [self._ignore("stale")]
        bids, asks = view["bids"], view["asks"]
        self.stats.checksums_verified += 1
        if checksum(bids, asks) != view["checksum"]:
            return [self._resync("checksum", f"full view seq {seq}")]
        self._newest_epoch = epoch
        self._bids, self._asks = ViewSide(False, bids), ViewSide(True, asks)
        self.book = self._book(view)
        outcomes: list[Outcome] = [self._updated()]
        pending, self._pending = self._pending, []
        for delta in sorted(pending, key=lambda d: (d["epoch"], d["seq"])):
            if delta["epoch"] == epoch and delta["seq"] > seq and self.book is not None:
                outcomes.extend(self._apply(delta))
        return outcomes

    def on_delta(self, delta: Mapping[str, Any]) -> list[Outcome]:
        self.stats.deltas += 1
        epoch = delta["epoch"]
        if epoch < self._newest_epoch:
            return [self._ignore("older_epoch")]
        self._newest_epoch = epoch
        book = self.book
        if book is None:
            self._pending = [*self._pending[-(PENDING_DELTAS - 1) :], delta]
            return [self._ignore("waiting")]
        if epoch > book.epoch:
            self._pending = [delta]
            return [self._resync("epoch", f"epoch {book.epoch} -> {epoch}")]
        return self._apply(delta)

    def reset(self, reason: str) -> Resync | None:
        """Drop the book (the link went down: ``reason``); the next full view starts it again.
        None: there was no book to drop."""
        if self.book is None:
            self._pending = []
            return None
        return self._resync(reason, "")

    def _apply(self, delta: Mapping[str, Any]) -> list[Outcome]:
        book = self.book
        assert book is not None
        seq = delta["seq"]
        if seq <= book.seq:
            return [self._ignore("stale")]
        if seq != book.seq + 1:
            self._pending = [delta]
            return [self._resync("gap", f"seq {book.seq} -> {seq}")]
        if delta["prevUpdateId"] != book.last_update_id:
            return [
                self._resync(
                    "chain", f"prevUpdateId {delta['prevUpdateId']} != {book.last_update_id}"
                )
            ]
        self._bids.apply(delta["bids"])
        self._asks.apply(delta["asks"])
        self.book = self._book(delta)
        self.stats.checksums_verified += 1
        if self.book.checksum != checksum(self.book.bids, self.book.asks):
            return [self._resync("checksum", f"delta seq {seq}")]
        return [self._updated()]

    def _book(self, message: Mapping[str, Any]) -> Book:
        return Book(
            symbol=self.symbol,
            last_update_id=message["lastUpdateId"],
            event_time=message["E"],
            epoch=message["epoch"],
            seq=message["seq"],
            checksum=message["checksum"],
            bids=tuple(self._bids.levels()),
            asks=tuple(self._asks.levels()),
        )

    def _updated(self) -> Updated:
        self.stats.updates += 1
        assert self.book is not None
        return Updated(self.book)

    def _resync(self, reason: str, detail: str) -> Resync:
        self.stats.resyncs[reason] += 1
        self.book = None
        if reason != "gap" and reason != "epoch":
            self._pending = []
        return Resync(reason, detail)

    def _ignore(self, reason: str) -> Ignored:
        self.stats.ignored[reason] += 1
        return Ignored(reason)

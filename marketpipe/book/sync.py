"""The per-symbol sync engine: Binance's local order book procedure as a pure state machine.

Events in (``on_diff``, ``on_snapshot``, ``on_disconnect``, ``on_stale``, ``on_window_lost``,
``on_fetch_started``/``_failed``), actions out; no I/O, no clock. The procedure is
binance-spot.md §3.1 with the notes of §3.3:

* every diff is buffered from the first one; the first buffered diff asks for a snapshot;
* a snapshot with ``lastUpdateId`` < the first buffered ``U`` is too old: fetch again, keep the
  buffer; otherwise drop buffered diffs with ``u <= lastUpdateId``, load the snapshot, replay;
* then for each diff: ``u`` < local id is stale (skipped); ``U`` > local id + 1 is a gap (the book
  is discarded and the procedure restarts from that diff); otherwise set its levels;
* the buffer is bounded: overflow discards it and restarts (counted), never unbounded memory;
  except while the snapshot asked for is still queued (``on_fetch_started`` not yet called):
  then the oldest diff makes room. A snapshot fetched later is as new as the newest diffs, so
  the oldest ones are the ones it makes useless; this changes no rule above (a snapshot older
  than the oldest diff kept is fetched again, a missing diff is a gap at replay), it only spares
  a resync for waiting in the queue. Once the fetch has started its answer may be older than
  anything buffered since, so nothing is dropped then (``on_fetch_failed``: queued again).

Impossible input discards the book rather than publish a wrong one: ``u < U``, a level that is not a
positive price with a non-negative quantity (:class:`~marketpipe.book.levels.BadLevel`), a crossed
book after a diff (best bid >= best ask), a diff for another symbol (refused, book kept). Each
symbol has its own machine, so one symbol's resync never touches another.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from marketpipe.book.book import OrderBook
from marketpipe.book.levels import BadLevel
from marketpipe.exchange.messages import DepthUpdate


class BookState(enum.StrEnum):
    SYNCING = "syncing"  # never been in sync since this machine started
    LIVE = "live"  # the book equals the exchange's at last_update_id
    RESYNCING = "resyncing"  # was discarded; see resync_reason


@dataclass(frozen=True, slots=True)
class FetchSnapshot:
    """Fetch ``GET /api/v3/depth`` for this symbol and hand it to ``on_snapshot``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Resync:
    """The book was discarded (``marketpipe_book_resyncs_total{reason}``); stop publishing it."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """Impossible input was refused (``marketpipe_bad_input_total{source="depth",kind}``)."""

    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The machine entered ``state`` (``reason`` says why for RESYNCING)."""

    state: BookState
    reason: str | None


@dataclass(frozen=True, slots=True)
class BookChanged:
    """The live book changed: its view is due for publishing."""


Action = FetchSnapshot | Resync | Rejected | StateChanged | BookChanged

_CHANGED: tuple[Action, ...] = (BookChanged(),)
_WENT_LIVE: tuple[Action, ...] = (StateChanged(BookState.LIVE, None), BookChanged())


class Snapshot(Protocol):
    """A REST depth snapshot (``marketpipe.exchange.rest.DepthSnapshot`` fits)."""

    @property
    def last_update_id(self) -> int: ...
    @property
    def bids(self) -> Sequence[Sequence[str]]: ...
    @property
    def asks(self) -> Sequence[Sequence[str]]: ...


class BookSync:
    """One symbol's book and its sync state.

    ``book``, ``last_update_id`` (the ``u`` of the last diff applied, or the snapshot's id) and
    ``last_event_time`` (the ``E`` of that diff) are meaningful while ``state`` is LIVE.
    """

    def __init__(self, symbol: str, buffer_size: int = 1000) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.symbol = symbol
        self.buffer_size = buffer_size
        self.book = OrderBook()
        self.state = BookState.SYNCING
        self.resync_reason: str | None = None
        self.last_update_id = 0
        self.last_event_time = 0
        self._buffer: deque[DepthUpdate] = deque()
        self._snapshot_requested = False
        self._fetching = False  # the snapshot asked for has left the queue

    @property
    def is_live(self) -> bool:
        return self.state is BookState.LIVE

    def on_diff(self, update: DepthUpdate) -> Sequence[Action]:
        if update.symbol != self.symbol:
            return (Rejected("wrong_symbol", f"{update.symbol} diff sent to {self.symbol}"),)
        if update.final_update_id < update.first_update_id:
            detail = f"u {update.final_update_id} < U {update.first_update_id}"
            return (Rejected("update_ids", detail), *self._reset("bad_update", detail))
        if self.state is BookState.LIVE:
            # Live, the buffer is always empty (every call drains it): apply straight away.
            return self._apply(update) or ()
        self._buffer.append(update)
        if len(self._buffer) > self.buffer_size:
            if self._snapshot_requested and not self._fetching:
                self._buffer.popleft()  # queued: the snapshot will be newer than this one
                return ()
            self._buffer.clear()
            self._buffer.append(update)
            return self._reset("buffer_full", f"over {self.buffer_size} diffs", keep_buffer=True)
        return self._request_snapshot("sync")

    def on_snapshot(self, snapshot: Snapshot, limit: int | None) -> Sequence[Action]:
        """A snapshot fetched with ``limit`` levels a side (None: unknown, assume truncated)."""
        if not self._snapshot_requested:
            return ()  # a late answer to a request made before the book went live
        self._snapshot_requested = self._fetching = False
        if not self._buffer:
            return ()  # nothing to check it against; the next diff asks again
        last_id = snapshot.last_update_id
        if last_id < self._buffer[0].first_update_id:
            return self._request_snapshot("stale_snapshot")
        try:
            self.book.load(snapshot.bids, snapshot.asks, limit)
        except BadLevel as exc:
            return self._refuse_snapshot(exc.kind, str(exc))
        if self.book.is_crossed():
            return self._refuse_snapshot("crossed", f"crossed snapshot at {last_id}")
        self.last_update_id = last_id
        while self._buffer and self._buffer[0].final_update_id <= last_id:
            self.last_event_time = self._buffer.popleft().event_time
        self.state = BookState.LIVE
        self.resync_reason = None
        actions = self._drain()
        return _WENT_LIVE if actions is None or actions is _CHANGED else actions

    def on_fetch_started(self) -> None:
        """The snapshot asked for (``FetchSnapshot``) left the queue: its request is on the way."""
        if self._snapshot_requested:
            self._fetching = True

    def on_fetch_failed(self) -> None:
        """That fetch failed; the snapshot is asked for again (queued as after FetchSnapshot)."""
        self._fetching = False

    def on_disconnect(self) -> Sequence[Action]:
        """The diff stream was lost: whatever comes next may have a gap."""
        return self._reset("disconnect", "stream disconnected")

    def on_stale(self, exchange_update_id: int) -> Sequence[Action]:
        """The exchange stood at ``exchange_update_id`` (a snapshot) while this book, beyond it
        by then, saw no diff: its stream delivers nothing, the book is old. Resync."""
        if self.state is not BookState.LIVE or exchange_update_id <= self.last_update_id:
            return ()
        detail = f"exchange at {exchange_update_id}, book at {self.last_update_id}"
        return self._reset("stale", detail)

    def on_window_lost(self) -> Sequence[Action]:
        """The view needs levels beyond the book's window (``render_view`` gave None): the market
        walked away from the snapshot. Start again from a new snapshot rather than publish less."""
        if self.state is not BookState.LIVE:
            return ()
        return self._reset("window", "the view reaches beyond the book's window")

    def _drain(self) -> tuple[Action, ...] | None:
        """Apply buffered diffs to the live book (None: nothing applied)."""
        buffer = self._buffer
        applied: tuple[Action, ...] | None = None
        while buffer:
            actions = self._apply(buffer.popleft())
            if actions is not _CHANGED and actions is not None:
                return actions
            applied = applied or actions
        return applied

    def _apply(self, update: DepthUpdate) -> tuple[Action, ...] | None:
        """The update procedure for one diff on the live book (None: stale, skipped)."""
        last_id = self.last_update_id
        if update.final_update_id < last_id:
            return None
        if update.first_update_id > last_id + 1:
            self._buffer.appendleft(update)  # the procedure restarts from this diff
            detail = f"U {update.first_update_id} after local id {last_id}"
            return self._reset("gap", detail, keep_buffer=True)
        book = self.book
        try:
            book.apply(update.bids, update.asks)
        except BadLevel as exc:
            return (Rejected(exc.kind, str(exc)), *self._reset("bad_level", str(exc)))
        if book.is_crossed():
            detail = f"crossed after update {update.final_update_id}"
            return (Rejected("crossed", detail), *self._reset("crossed", detail))
        self.last_update_id = update.final_update_id
        self.last_event_time = update.event_time
        return _CHANGED

    def _reset(self, reason: str, detail: str, keep_buffer: bool = False) -> tuple[Action, ...]:
        self.book.clear()
        self.state = BookState.RESYNCING
        self.resync_reason = reason
        if not keep_buffer:
            self._buffer.clear()
        return (
            Resync(reason, detail),
            StateChanged(BookState.RESYNCING, reason),
            *self._request_snapshot(reason),
        )

    def _request_snapshot(self, reason: str) -> tuple[Action, ...]:
        if self._snapshot_requested or not self._buffer:
            return ()
        self._snapshot_requested, self._fetching = True, False
        return (FetchSnapshot(reason),)

    def _refuse_snapshot(self, kind: str, detail: str) -> tuple[Action, ...]:
        self.book.clear()
        return (Rejected(kind, detail), *self._request_snapshot("bad_snapshot"))

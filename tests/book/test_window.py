"""What a book vouches for, when the market moves away from its snapshot.

The exchange's diffs report changes only within the top 5000 levels of a side (the simulator does
exactly that), and a snapshot holds at most ``limit`` levels. So a book must never vouch for a
level deeper than the diffs reach (``DIFF_HORIZON``), and a view that needs levels beyond the
book's window must not be published short, as if those levels did not exist.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any
from unittest.mock import patch

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.book import book as book_module
from marketpipe.book.book import DIFF_HORIZON, OrderBook
from marketpipe.book.sync import BookState, BookSync, FetchSnapshot, Resync
from marketpipe.book.view import render_view
from marketpipe.exchange.messages import DepthUpdate, decode_depth
from marketpipe.simulator.market import Market

from .test_sync_property import RestSnapshot
from .truth import true_view

Levels = list[tuple[str, str]]


@dataclass(frozen=True)
class Settings:
    max_spread_pct: float
    depth: int


def bids_from(high: int, low: int, quantity: str = "1") -> Levels:
    return [(f"{p}.00", quantity) for p in range(high, low - 1, -1)]


def test_a_window_never_reaches_below_the_diff_horizon() -> None:
    book = OrderBook()
    book.load(bids_from(6000, 1001), [], 5000)  # the top 5000 of a deeper side
    book.apply(bids_from(6100, 6001), [])  # 100 new best bids, sent
    # 1001..1100 now rank 5001..5100: the exchange no longer sends their changes, so the book
    # must not claim to know them.
    assert not book.bids.covers("1050.00")
    assert len(book.bids) < DIFF_HORIZON


def test_a_complete_side_that_reaches_the_horizon_stops_vouching_beyond_it() -> None:
    book = OrderBook()
    book.load(bids_from(5000, 11), [], 5000)  # 4990 < 5000 asked: the whole side
    book.apply(bids_from(5020, 5001), [])  # 20 new best bids: 5010 levels
    # a new level at 5.00 would rank 5011: never sent, so the side is no longer known whole
    assert not book.bids.covers("5.00")


def _rank_filtered(truth: dict[int, str], changes: dict[int, str], horizon: int) -> Levels:
    """The changes an exchange sends: those that end within the top ``horizon`` levels."""
    sent = []
    for tick, quantity in changes.items():
        rank = sum(1 for t in truth if t > tick) + 1  # a removed level counts where it was
        if rank <= horizon:
            sent.append((f"{tick}.00", quantity))
    return sent


@settings(max_examples=300, deadline=None)
@given(
    snapshot=st.dictionaries(st.integers(1, 60), st.just("7"), max_size=30),
    diffs=st.lists(
        st.dictionaries(st.integers(1, 60), st.sampled_from(["0", "1", "2"]), max_size=6),
        max_size=30,
    ),
    limit=st.sampled_from([None, 2, 4, 6, 9]),
)
def test_a_book_vouches_only_for_what_the_diffs_report(
    snapshot: dict[int, str], diffs: list[dict[int, str]], limit: int | None
) -> None:
    horizon = 6
    truth = dict(snapshot)
    best_first = sorted(truth, reverse=True)[: min(limit or horizon, horizon)]
    with patch.object(book_module, "DIFF_HORIZON", horizon):
        book = OrderBook()
        book.load([(f"{t}.00", truth[t]) for t in best_first], [], limit)
        for changes in diffs:
            for tick, quantity in changes.items():
                if quantity == "0":
                    truth.pop(tick, None)
                else:
                    truth[tick] = quantity
            book.apply(_rank_filtered(truth, changes, horizon), [])
            known = [(f"{t}.00", truth[t]) for t in sorted(truth, reverse=True)]
            assert book.bids.levels() == [lv for lv in known if book.bids.covers(lv[0])]


# --- a view the window no longer covers --------------------------------------------------------


def live_book(bids: Levels, asks: Levels, limit: int) -> BookSync:
    sync = BookSync("BTCUSDT")
    sync.on_diff(DepthUpdate(1, "BTCUSDT", 7, 9, [], []))
    sync.on_snapshot(RestSnapshot(9, bids, asks), limit)
    assert sync.state is BookState.LIVE
    return sync


ASKS = [("101", "1"), ("102", "1"), ("103", "1")]  # a complete side (3 < limit 4)


def test_a_view_that_needs_levels_beyond_the_window_is_not_given() -> None:
    sync = live_book([("100", "1"), ("99", "1"), ("98", "1"), ("97", "1")], ASKS, limit=4)
    wide = Settings(max_spread_pct=50, depth=3)
    assert render_view(sync, wide, seq=1, epoch=1) is not None
    sync.book.apply([("100", "0"), ("99", "0")], [])  # the market walked down: 2 bids known
    assert render_view(sync, wide, seq=1, epoch=1) is None  # 96 may exist: unknown
    actions = sync.on_window_lost()
    assert Resync("window", "the view reaches beyond the book's window") in actions
    assert sync.state is BookState.RESYNCING and sync.resync_reason == "window"
    assert sync.on_diff(DepthUpdate(2, "BTCUSDT", 10, 10, [], [])) == (FetchSnapshot("sync"),)


def test_a_short_view_is_given_when_the_window_reaches_the_spread_bound() -> None:
    sync = live_book([("100", "1"), ("99", "1"), ("98", "1"), ("97", "1")], ASKS, limit=4)
    sync.book.apply([("100", "0")], [])
    # mid 100, 2 %: bids >= 98; the window goes down to 97, so two bids are all there are
    body = orjson.loads(render_view(sync, Settings(2, 3), seq=1, epoch=1) or b"null")
    assert body["bids"] == [["99", "1"], ["98", "1"]]


def test_a_window_ending_exactly_at_the_bound_reaches_it() -> None:
    # mid 100, 10 %: bids >= 90; the floor level is 90 itself
    sync = live_book([("99", "1"), ("95", "1"), ("90", "1")], [("101", "1")], limit=3)
    assert render_view(sync, Settings(10, 5), seq=1, epoch=1) is not None
    sync.book.apply([("90", "0")], [])  # gone: whether a level sits at 90 is no longer known
    assert render_view(sync, Settings(10, 5), seq=1, epoch=1) is None


def test_a_one_sided_book_needs_depth_levels_or_a_complete_side() -> None:
    sync = live_book([("100", "1"), ("99", "1")], [], limit=2)
    assert render_view(sync, Settings(10, 2), seq=1, epoch=1) is not None
    assert render_view(sync, Settings(10, 3), seq=1, epoch=1) is None
    sync = live_book([("100", "1"), ("99", "1")], [], limit=5)  # complete: that is all of it
    assert render_view(sync, Settings(10, 3), seq=1, epoch=1) is not None


# --- the view, against the simulator's market model -----------------------------------------


Book = dict[str, Any]  # the REST depth shape: lastUpdateId, bids, asks (best first)


def snapshot_of(book: Book, limit: int) -> RestSnapshot:
    bids, asks = (
        [(price, quantity) for price, quantity in book[side][:limit]] for side in ("bids", "asks")
    )
    return RestSnapshot(book["lastUpdateId"], bids, asks)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), symbol=st.sampled_from(["BNBUSDT", "SOLUSDT"]))
def test_every_view_the_book_gives_equals_the_true_view(seed: int, symbol: str) -> None:
    """The simulator's market moves away from a snapshot only a little deeper than the view
    (44 levels for Depth 40) while the stream drops, duplicates and reorders diffs and
    snapshots come late or stale: every view the book gives is the true one at its update id, and
    when it has none (its window no longer covers the view) it resyncs."""
    limit, view = 44, Settings(max_spread_pct=35.0, depth=40)
    exchange = Market.create(4, seed=7, levels=300).symbols[symbol]
    rng = random.Random(seed)
    sync = BookSync(symbol, buffer_size=50)
    history: dict[int, Book] = {exchange.update_id: exchange.depth()}
    in_transit: list[bytes] = []
    answer_at: int | None = None
    views = lost = 0
    for step in range(600):
        diff = exchange.step(step).diff
        history[exchange.update_id] = exchange.depth()
        if diff is not None and rng.random() > 0.01:  # 1 % dropped
            in_transit += [exchange.encode_diff(diff, step)] * (2 if rng.random() < 0.02 else 1)
        if len(in_transit) > 1 and rng.random() < 0.05:  # reordered
            in_transit[-1], in_transit[-2] = in_transit[-2], in_transit[-1]
        actions = [a for frame in in_transit for a in sync.on_diff(decode_depth(frame))]
        in_transit = []
        if rng.random() < 0.005:
            actions += sync.on_disconnect()
        if answer_at is None and any(isinstance(a, FetchSnapshot) for a in actions):
            answer_at = step + rng.randrange(4)  # the answer takes a while
        if answer_at is not None and answer_at <= step:
            recent = sorted(history)[-5:]  # now and then an older book (a stale snapshot)
            book = history[rng.choice(recent)] if rng.random() < 0.1 else exchange.depth()
            again = sync.on_snapshot(snapshot_of(book, limit), limit)
            answer_at = step + 1 if any(isinstance(a, FetchSnapshot) for a in again) else None
        if sync.state is BookState.LIVE:
            payload = render_view(sync, view, seq=1, epoch=1)
            if payload is None:
                lost += 1
                sync.on_window_lost()
                continue
            views += 1
            message = orjson.loads(payload)
            truth = history[sync.last_update_id]
            want = true_view(truth["bids"], truth["asks"], 35.0, 40)
            assert (message["bids"], message["asks"]) == want, step
    assert views > 100 and lost > 0

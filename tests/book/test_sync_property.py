"""Whatever the stream does (drops, duplicates, reorders, stale snapshots, disconnects), a book that
says it is live equals the truth at its update id, compared level by level with exact strings, and
any view it gives is the true view (when it has none, it resyncs)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.book.side import BookSide
from marketpipe.book.sync import BookState, BookSync, FetchSnapshot
from marketpipe.book.view import render_view
from marketpipe.exchange.messages import DepthUpdate

from .truth import SYMBOL, Evolution, Side, State, evolutions, true_view


@dataclass(frozen=True)
class RestSnapshot:
    last_update_id: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


def rest_snapshot(state: State, limit: int | None) -> RestSnapshot:
    bids = sorted(state.bids.items(), key=lambda level: -float(level[0]))
    asks = sorted(state.asks.items(), key=lambda level: float(level[0]))
    if limit is not None:
        bids, asks = bids[:limit], asks[:limit]
    return RestSnapshot(state.update_id, bids, asks)


def expected(side: BookSide, truth: Side, descending: bool) -> list[tuple[str, str]]:
    """The truth restricted to the window the book vouches for, best first."""
    levels = [(p, q) for p, q in truth.items() if side.covers(p)]
    return sorted(levels, key=lambda level: float(level[0]), reverse=descending)


@dataclass(frozen=True)
class ViewSettings:
    max_spread_pct: float
    depth: int


VIEW = ViewSettings(max_spread_pct=20.0, depth=3)  # prices 1.01..2.00: the bound cuts some


def check(sync: BookSync, evolution: Evolution) -> bool:
    """False: the book is live but its window no longer covers the view."""
    if sync.state is not BookState.LIVE:
        return True
    truth = evolution.state_at(sync.last_update_id)
    assert sync.book.bids.levels() == expected(sync.book.bids, truth.bids, descending=True)
    assert sync.book.asks.levels() == expected(sync.book.asks, truth.asks, descending=False)
    payload = render_view(sync, VIEW, seq=1, epoch=1)
    if payload is None:
        return False
    bids = sorted(([p, q] for p, q in truth.bids.items()), key=lambda lv: -float(lv[0]))
    asks = sorted(([p, q] for p, q in truth.asks.items()), key=lambda lv: float(lv[0]))
    message = orjson.loads(payload)
    assert (message["bids"], message["asks"]) == true_view(bids, asks, VIEW.max_spread_pct, 3)
    return True


FAULTS = st.sampled_from(["deliver"] * 6 + ["drop", "duplicate", "swap", "disconnect", "stale"])


@settings(max_examples=300, deadline=None)
@given(evolutions(), st.data())
def test_live_book_always_equals_truth(evolution: Evolution, data: st.DataObject) -> None:
    limit = data.draw(st.sampled_from([None, 2, 5, 1000]), label="snapshot limit")
    sync = BookSync(SYMBOL, buffer_size=data.draw(st.integers(1, 30), label="buffer"))
    produced = 0  # how far the exchange has got in the truth
    requested = False
    pending: list[DepthUpdate] = []

    def feed(actions: object) -> None:
        nonlocal requested
        requested = requested or any(isinstance(a, FetchSnapshot) for a in actions)  # type: ignore[attr-defined]
        if not check(sync, evolution):
            sync.on_window_lost()  # as the service does: resync rather than publish it short

    for diff in evolution.diffs:
        produced += 1
        fault = data.draw(FAULTS)
        if fault == "drop":
            continue
        if fault == "swap":
            pending.append(diff)
            continue
        feed(sync.on_diff(diff))
        for held in pending:
            feed(sync.on_diff(held))
        pending.clear()
        if fault == "duplicate":
            feed(sync.on_diff(diff))
        elif fault == "disconnect":
            feed(sync.on_disconnect())
        elif fault == "stale":  # a check found the exchange where it is now
            feed(sync.on_stale(evolution.states[produced].update_id))
        if requested:  # the fetch leaves the queue, or fails and is queued again
            fetch = data.draw(st.sampled_from(["queued", "started", "failed"]), label="fetch")
            if fetch == "started":
                sync.on_fetch_started()
            elif fetch == "failed":
                sync.on_fetch_failed()
        if requested and data.draw(st.booleans(), label="serve snapshot"):
            requested = False
            index = data.draw(st.integers(max(0, produced - 4), produced), label="snapshot at")
            feed(sync.on_snapshot(rest_snapshot(evolution.states[index], limit), limit))


@settings(max_examples=100, deadline=None)
@given(evolutions())
def test_clean_stream_goes_live_and_follows(evolution: Evolution) -> None:
    sync = BookSync(SYMBOL)
    actions = sync.on_diff(evolution.diffs[0])
    assert FetchSnapshot("sync") in actions
    sync.on_snapshot(rest_snapshot(evolution.states[1], None), None)
    assert sync.state is BookState.LIVE
    assert sync.last_update_id == evolution.states[1].update_id
    for diff in evolution.diffs[1:]:
        sync.on_diff(diff)
        assert sync.state is BookState.LIVE
        check(sync, evolution)
    assert sync.last_update_id == evolution.states[-1].update_id

"""Each rule of the sync procedure (binance-spot.md §3.1, §3.3), one at a time."""

from __future__ import annotations

from marketpipe.book.sync import (
    BookChanged,
    BookState,
    BookSync,
    FetchSnapshot,
    Rejected,
    Resync,
    StateChanged,
)
from marketpipe.exchange.messages import DepthUpdate

from .test_sync_property import RestSnapshot

SYMBOL = "BTCUSDT"


def diff(first: int, last: int, bids=(), asks=(), symbol: str = SYMBOL) -> DepthUpdate:
    return DepthUpdate(last, symbol, first, last, list(bids), list(asks))


def snapshot(last_id: int, bids=(("10.00", "1"),), asks=(("11.00", "1"),)) -> RestSnapshot:
    return RestSnapshot(last_id, list(bids), list(asks))


def live_at(last_id: int = 100) -> BookSync:
    sync = BookSync(SYMBOL)
    sync.on_diff(diff(last_id - 2, last_id + 1))
    sync.on_snapshot(snapshot(last_id), 1000)
    assert sync.state is BookState.LIVE
    return sync


def reasons(actions) -> list[str]:
    return [a.reason for a in actions if isinstance(a, Resync)]


def test_first_diff_asks_for_one_snapshot_and_buffers() -> None:
    sync = BookSync(SYMBOL)
    assert sync.state is BookState.SYNCING
    assert sync.on_diff(diff(5, 6)) == (FetchSnapshot("sync"),)
    assert sync.on_diff(diff(7, 8)) == ()


def test_snapshot_older_than_first_buffered_event_is_refetched_keeping_the_buffer() -> None:
    sync = BookSync(SYMBOL)
    sync.on_diff(diff(50, 60))
    assert sync.on_snapshot(snapshot(49), 1000) == (FetchSnapshot("stale_snapshot"),)
    actions = sync.on_snapshot(snapshot(55), 1000)
    assert actions == (StateChanged(BookState.LIVE, None), BookChanged())
    assert sync.last_update_id == 60


def test_buffered_events_up_to_the_snapshot_are_dropped_then_the_rest_applied() -> None:
    sync = BookSync(SYMBOL)
    sync.on_diff(diff(1, 10, bids=[("10.00", "5")]))  # included in the snapshot: dropped
    sync.on_diff(diff(11, 20, bids=[("9.00", "2")]))
    sync.on_snapshot(snapshot(15), 1000)
    assert sync.book.bids.levels() == [("10.00", "1"), ("9.00", "2")]
    assert (sync.last_update_id, sync.last_event_time) == (20, 20)


def test_snapshot_newer_than_every_buffered_event_is_live_at_its_own_id() -> None:
    sync = BookSync(SYMBOL)
    sync.on_diff(diff(1, 10))
    sync.on_snapshot(snapshot(30), 1000)
    assert sync.state is BookState.LIVE
    assert (sync.last_update_id, sync.last_event_time) == (30, 10)


def test_unrequested_snapshot_is_ignored() -> None:
    sync = live_at(100)
    assert sync.on_snapshot(snapshot(200, bids=[("1.00", "1")]), 1000) == ()
    assert sync.book.bids.levels() == [("10.00", "1")]


def test_stale_event_is_skipped_and_overlapping_event_applied() -> None:
    sync = live_at(100)  # local id 101 after the buffered diff
    assert sync.on_diff(diff(90, 100, bids=[("10.00", "9")])) == ()
    assert sync.on_diff(diff(101, 105, bids=[("10.00", "7")])) == (BookChanged(),)
    assert sync.book.bids.levels() == [("10.00", "7")]
    assert sync.last_update_id == 105


def test_gap_resyncs_and_restarts_from_the_gap_event() -> None:
    sync = live_at(100)
    actions = sync.on_diff(diff(103, 104))
    assert reasons(actions) == ["gap"]
    assert StateChanged(BookState.RESYNCING, "gap") in actions
    assert FetchSnapshot("gap") in actions
    assert (sync.state, sync.resync_reason) == (BookState.RESYNCING, "gap")
    assert len(sync.book) == 0
    sync.on_snapshot(snapshot(103), 1000)
    assert sync.state is BookState.LIVE
    assert sync.last_update_id == 104


def test_impossible_ids_are_rejected_and_resync() -> None:
    sync = live_at(100)
    actions = sync.on_diff(diff(110, 105))
    assert Rejected("update_ids", "u 105 < U 110") in actions
    assert reasons(actions) == ["bad_update"]
    assert sync.state is BookState.RESYNCING


def test_negative_quantity_and_zero_price_are_rejected_and_resync() -> None:
    for level in (("10.00", "-1"), ("0.00", "1"), ("nan", "1"), ("abc", "1"), ("1.0", "inf")):
        sync = live_at(100)
        actions = sync.on_diff(diff(102, 102, bids=[level]))
        assert reasons(actions) == ["bad_level"], level
        assert any(isinstance(a, Rejected) for a in actions)
        assert sync.state is BookState.RESYNCING


def test_crossed_book_after_a_diff_resyncs() -> None:
    sync = live_at(100)
    actions = sync.on_diff(diff(102, 102, bids=[("11.00", "1")]))
    assert reasons(actions) == ["crossed"]
    assert sync.state is BookState.RESYNCING


def test_crossed_snapshot_is_refused_and_fetched_again() -> None:
    sync = BookSync(SYMBOL)
    sync.on_diff(diff(1, 2))
    actions = sync.on_snapshot(snapshot(5, bids=[("12.00", "1")]), 1000)
    assert actions[0] == Rejected("crossed", "crossed snapshot at 5")
    assert actions[1] == FetchSnapshot("bad_snapshot")
    assert sync.state is BookState.SYNCING


def test_diff_for_another_symbol_is_refused_and_the_book_kept() -> None:
    sync = live_at(100)
    actions = sync.on_diff(diff(102, 102, symbol="ETHUSDT"))
    assert [type(a) for a in actions] == [Rejected]
    assert sync.state is BookState.LIVE


def test_buffer_overflow_is_a_counted_resync_with_bounded_memory() -> None:
    sync = BookSync(SYMBOL, buffer_size=3)
    sync.on_diff(diff(1, 1))
    sync.on_fetch_started()  # its answer may be older than any diff from now on: all are kept
    sync.on_diff(diff(2, 2))
    sync.on_diff(diff(3, 3))
    actions = sync.on_diff(diff(4, 4))
    assert reasons(actions) == ["buffer_full"]
    assert len(sync._buffer) == 1
    assert sync.on_snapshot(snapshot(2), 1000) == (FetchSnapshot("stale_snapshot"),)
    assert sync.on_snapshot(snapshot(4), 1000)[0] == StateChanged(BookState.LIVE, None)


def test_while_the_snapshot_is_queued_the_oldest_diffs_make_room_without_a_resync() -> None:
    sync = BookSync(SYMBOL, buffer_size=3)
    assert sync.on_diff(diff(1, 1)) == (FetchSnapshot("sync"),)
    for n in range(2, 10):
        assert sync.on_diff(diff(n, n)) == ()
    assert [d.first_update_id for d in sync._buffer] == [7, 8, 9]
    assert sync.state is BookState.SYNCING
    sync.on_fetch_started()
    assert sync.on_snapshot(snapshot(6), 1000) == (FetchSnapshot("stale_snapshot"),)
    assert sync.on_snapshot(snapshot(7), 1000)[0] == StateChanged(BookState.LIVE, None)
    assert sync.last_update_id == 9


def test_a_failed_fetch_is_queued_again_and_a_started_one_keeps_every_diff() -> None:
    sync = BookSync(SYMBOL, buffer_size=2)
    sync.on_diff(diff(1, 1))
    sync.on_fetch_started()
    sync.on_fetch_failed()
    sync.on_diff(diff(2, 2))
    assert sync.on_diff(diff(3, 3)) == ()  # queued again: room is made
    sync.on_fetch_started()
    assert reasons(sync.on_diff(diff(4, 4))) == ["buffer_full"]


def test_disconnect_resyncs_and_the_next_diff_asks_again() -> None:
    sync = live_at(100)
    actions = sync.on_disconnect()
    assert reasons(actions) == ["disconnect"]
    assert not any(isinstance(a, FetchSnapshot) for a in actions)  # nothing buffered yet
    assert sync.on_diff(diff(300, 301)) == (FetchSnapshot("sync"),)


def test_snapshot_answering_a_request_from_before_a_disconnect_waits_for_a_diff() -> None:
    sync = BookSync(SYMBOL)
    sync.on_diff(diff(1, 1))
    sync.on_disconnect()
    assert sync.on_snapshot(snapshot(5), 1000) == ()
    assert sync.on_diff(diff(9, 9)) == (FetchSnapshot("sync"),)


def test_a_book_the_exchange_moved_past_without_a_diff_resyncs() -> None:
    sync = live_at(100)  # at 101 after the buffered diff
    assert sync.on_stale(101) == ()  # the exchange is where the book is: a quiet pair
    actions = sync.on_stale(105)
    assert reasons(actions) == ["stale"]
    assert StateChanged(BookState.RESYNCING, "stale") in actions
    assert not any(isinstance(a, FetchSnapshot) for a in actions)  # the next diff asks
    assert sync.on_stale(200) == ()  # not live: nothing more to discard
    assert sync.on_diff(diff(300, 301)) == (FetchSnapshot("sync"),)


def test_state_is_a_string_for_status_messages() -> None:
    assert BookState.LIVE == "live" and BookState.RESYNCING == "resyncing"

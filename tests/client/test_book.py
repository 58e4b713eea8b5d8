"""The client's local book: whatever NATS does to the messages (loss, duplicates, reordering,
corruption, a new leader), every book it hands out is a view the publisher published, exactly,
and it resyncs (for a stated reason) rather than guess."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.book.delta import ViewPublisher
from marketpipe.client.book import Book, BookKeeper, Ignored, Resync, Updated
from tests.book.test_delta import live_book, reference_checksum, views

Message = tuple[str, dict[str, Any]]  # ("view" | "delta", message)


def published_stream(sequence, data) -> tuple[dict[tuple[int, int], dict[str, Any]], list]:
    """Every view a publisher (or, after a change of leader, its successor) published, by
    (epoch, seq), and the messages in the order they were sent."""
    publisher, epoch, seq, update_id = ViewPublisher(), 3, 0, 100
    views: dict[tuple[int, int], dict[str, Any]] = {}
    sent: list[Message] = []
    for bids, asks, view_settings in sequence:
        if data.draw(st.integers(0, 9), label="new leader") == 0:
            publisher.forget()
            epoch, seq = epoch + data.draw(st.integers(1, 2)), 0
        seq += 1
        update_id += data.draw(st.integers(0, 3), label="update ids on")
        rendered = publisher.render(live_book(update_id, bids, asks), view_settings, seq, epoch)
        assert rendered is not None
        publisher.published()
        full = orjson.loads(rendered[0])
        views[epoch, seq] = full
        sent.append(("view", full))
        if rendered[1] is not None:
            sent.append(("delta", orjson.loads(rendered[1])))
    return views, sent


def corrupt(delta: dict[str, Any]) -> dict[str, Any]:
    """A delta whose levels were damaged on the way (the checksum no longer matches)."""
    changed = dict(delta)
    changed["bids"] = [*delta["bids"], ["0.01", "777"]]
    return changed


FAULT = st.sampled_from(["deliver"] * 8 + ["drop", "duplicate", "swap", "corrupt"])


def check(outcomes, views) -> Book | None:
    book = None
    for outcome in outcomes:
        if isinstance(outcome, Updated):
            book = outcome.book
            want = views[book.epoch, book.seq]
            assert [list(lv) for lv in book.bids] == want["bids"]
            assert [list(lv) for lv in book.asks] == want["asks"]
            assert book.last_update_id == want["lastUpdateId"]
            assert (
                book.checksum == want["checksum"] == reference_checksum(want["bids"], want["asks"])
            )
        else:
            assert isinstance(outcome, Resync | Ignored)
    return book


@settings(max_examples=200, deadline=None)
@given(st.lists(views(), min_size=1, max_size=15), st.data())
def test_every_book_handed_out_is_a_published_view(sequence, data) -> None:
    views, sent = published_stream(sequence, data)
    keeper = BookKeeper("BTCUSDT")
    deltas = [m for kind, m in sent if kind == "delta"]
    fulls = [m for kind, m in sent if kind == "view"]
    # deltas arrive with faults; full views only while the keeper waits for one (as the NATS
    # shell subscribes to them on a resync), and not always the newest
    arriving = list(deltas)
    delivered: list[dict[str, Any]] = []
    while arriving:
        message = arriving.pop(0)
        fault = data.draw(FAULT, label="fault")
        if fault == "drop":
            continue
        if fault == "duplicate":
            arriving.insert(0, message)
        if fault == "swap" and arriving:
            arriving.insert(1, message)
            continue
        delivered.append(corrupt(message) if fault == "corrupt" else message)
    for message in delivered:
        if keeper.waiting:
            up_to = [
                f for f in fulls if (f["epoch"], f["seq"]) < (message["epoch"], message["seq"])
            ]
            if up_to:
                check(keeper.on_view(data.draw(st.sampled_from(up_to[-3:]), label="view")), views)
        check(keeper.on_delta(message), views)
        assert keeper.waiting or keeper.book is not None
    # the stream stops: the newest full view always brings the keeper to the last published view
    check(keeper.on_view(fulls[-1]), views)
    assert keeper.book is not None
    newest = max(views)
    assert (keeper.book.epoch, keeper.book.seq) == newest
    stats = keeper.stats
    assert stats.updates >= 1 and stats.checksums_verified >= stats.updates


BIDS, ASKS = [["9", "1"]], [["10", "1"]]
SUM = reference_checksum(BIDS, ASKS)


def delta_of(seq: int, prev: int, last: int, epoch: int = 1) -> dict[str, Any]:
    """A delta that changes nothing (the book stays BIDS, ASKS)."""
    return {
        "symbol": "BTCUSDT",
        "lastUpdateId": last,
        "prevUpdateId": prev,
        "E": 5,
        "seq": seq,
        "epoch": epoch,
        "bids": [],
        "asks": [],
        "checksum": SUM,
    }


def view_of(seq: int, last: int, epoch: int = 1) -> dict[str, Any]:
    message = {**delta_of(seq, 0, last, epoch), "bids": BIDS, "asks": ASKS}
    del message["prevUpdateId"]
    return message


def test_each_reason_is_named() -> None:
    keeper = BookKeeper("BTCUSDT")
    (first,) = keeper.on_view(view_of(1, 7))
    assert isinstance(first, Updated) and first.book.seq == 1

    (gap,) = keeper.on_delta(delta_of(3, 8, 9))
    assert isinstance(gap, Resync) and gap.reason == "gap"
    keeper.on_view(view_of(2, 8))  # and the delta kept applies after it
    assert keeper.book is not None and keeper.book.seq == 3

    (chain,) = keeper.on_delta(delta_of(4, 1234, 10))
    assert isinstance(chain, Resync) and chain.reason == "chain"
    keeper.on_view(view_of(4, 10))

    bad = {**delta_of(5, 10, 11), "bids": [["9", "2"]]}
    (wrong,) = keeper.on_delta(bad)
    assert isinstance(wrong, Resync) and wrong.reason == "checksum"
    keeper.on_view(view_of(5, 11))

    (newer,) = keeper.on_delta(delta_of(2, 11, 12, epoch=2))
    assert isinstance(newer, Resync) and newer.reason == "epoch"
    keeper.on_view(view_of(1, 11, epoch=2))
    assert keeper.book is not None and (keeper.book.epoch, keeper.book.seq) == (2, 2)

    (old,) = keeper.on_delta(delta_of(6, 11, 13))
    assert old == Ignored("older_epoch")
    (again,) = keeper.on_delta(delta_of(2, 11, 12, epoch=2))
    assert again == Ignored("stale")
    assert keeper.stats.resyncs == {"gap": 1, "chain": 1, "checksum": 1, "epoch": 1}


def test_book_reads() -> None:
    book = Book(
        "BTCUSDT",
        1,
        2,
        3,
        4,
        0,
        (("100", "1"), ("99.5", "2"), ("98", "4")),
        (("101", "1.5"), ("102", "3"), ("110", "9")),
    )
    assert book.best_bid == ("100", "1") and book.best_ask == ("101", "1.5")
    assert book.mid == Decimal("100.5") and book.spread == Decimal(1)
    near_bids, near_asks = book.depth_within(2)  # 98.49 .. 102.51
    assert near_bids == (("100", "1"), ("99.5", "2"))
    assert near_asks == (("101", "1.5"), ("102", "3"))
    assert book.volume(near_bids) == Decimal(3)
    assert book.bids_from("98") == book.bids and book.asks_to("100") == ()

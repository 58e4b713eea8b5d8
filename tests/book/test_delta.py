"""DESIGN §10: every published view carries the checksum of its best 25 levels a side, and the
delta from the previous published view, applied to that view, gives the new view exactly."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.book.delta import ViewPublisher, ViewSide, checksum
from marketpipe.book.sync import BookSync
from marketpipe.exchange.messages import DepthUpdate

from .test_sync_property import RestSnapshot, rest_snapshot
from .truth import SYMBOL, evolutions, true_view


@dataclass(frozen=True)
class Settings:
    max_spread_pct: float
    depth: int


def reference_checksum(bids: list[list[str]], asks: list[list[str]]) -> int:
    """DESIGN §10 written out plainly, apart from the service's and the client's code."""
    pieces: list[str] = []
    i = 0
    while i < 25 and (i < len(bids) or i < len(asks)):
        if i < len(bids):
            pieces.append(bids[i][0] + ":" + bids[i][1])
        if i < len(asks):
            pieces.append(asks[i][0] + ":" + asks[i][1])
        i += 1
    return zlib.crc32(":".join(pieces).encode("utf-8")) & 0xFFFFFFFF


def live_book(update_id: int, bids: dict[str, str], asks: dict[str, str]) -> BookSync:
    sync = BookSync("BTCUSDT")
    sync.on_diff(DepthUpdate(1765432100000 + update_id, "BTCUSDT", update_id, update_id, [], []))
    best_bids = sorted(bids.items(), key=lambda level: -float(level[0]))
    best_asks = sorted(asks.items(), key=lambda level: float(level[0]))
    sync.on_snapshot(RestSnapshot(update_id, best_bids, best_asks), 5000)
    assert sync.is_live
    return sync


# Prices on ticks of 0.01, written in several spellings of the same number (a view may change
# a level's spelling: the delta must carry the new string); bids below 10, asks from 10.
def spelled(tick: int) -> st.SearchStrategy[str]:
    whole, cents = divmod(tick, 100)
    spellings = {f"{whole}.{cents:02d}", f"{whole}.{cents:02d}000000"}
    if cents % 10 == 0:
        spellings.add(f"{whole}.{cents // 10}")
    return st.sampled_from(sorted(spellings))


QUANTITY = st.sampled_from(["1", "0.5", "0.50000000", "12.25", "0.00000001", "3.10"])


@st.composite
def side(draw: st.DrawFn, ticks: st.SearchStrategy[int]) -> dict[str, str]:
    # up to 160 levels: the top 25 may then cross one of the compiled side's chunks (128)
    chosen = draw(st.sets(ticks, max_size=draw(st.sampled_from([5, 40, 160]))))
    return {draw(spelled(t)): draw(QUANTITY) for t in chosen}


@st.composite
def views(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, str], Settings]:
    bids = draw(side(st.integers(100, 999)))
    asks = draw(side(st.integers(1000, 1900)))
    pct = draw(st.sampled_from([1.0, 5.0, 35.0, 100.0]))
    return bids, asks, Settings(pct, draw(st.sampled_from([1, 3, 10, 25, 30, 250])))


def levels(book: ViewSide) -> list[list[str]]:
    return [list(level) for level in book.levels()]


@settings(max_examples=200, deadline=None)
@given(st.lists(views(), min_size=1, max_size=12), st.data())
def test_deltas_reproduce_each_next_view_exactly(sequence, data) -> None:
    publisher = ViewPublisher()
    update_id = 100
    held: tuple[ViewSide, ViewSide] | None = None  # a consumer's view, from snapshot + deltas
    held_id = 0
    for seq, (bids, asks, view_settings) in enumerate(sequence, start=1):
        update_id += data.draw(st.integers(0, 3), label="update ids on")
        sync = live_book(update_id, bids, asks)
        rendered = publisher.render(sync, view_settings, seq=seq, epoch=4)
        assert rendered is not None
        full_message, delta_message = rendered
        full = orjson.loads(full_message)
        want = true_view(
            sorted(([p, q] for p, q in bids.items()), key=lambda lv: -float(lv[0])),
            sorted(([p, q] for p, q in asks.items()), key=lambda lv: float(lv[0])),
            view_settings.max_spread_pct,
            view_settings.depth,
        )
        assert (full["bids"], full["asks"]) == want
        assert full["checksum"] == reference_checksum(*want) == checksum(*want)
        if held is None:
            assert delta_message is None  # nothing published yet to chain from
            held = ViewSide(False, full["bids"]), ViewSide(True, full["asks"])
        else:
            assert delta_message is not None
            delta = orjson.loads(delta_message)
            assert delta["prevUpdateId"] == held_id
            head = ("symbol", "lastUpdateId", "E", "seq", "epoch", "checksum")
            assert {k: delta[k] for k in head} == {k: full[k] for k in head}
            held[0].apply(delta["bids"])
            held[1].apply(delta["asks"])
            assert (levels(held[0]), levels(held[1])) == want
            assert reference_checksum(levels(held[0]), levels(held[1])) == delta["checksum"]
        publisher.published()
        held_id = full["lastUpdateId"]


@settings(max_examples=100, deadline=None)
@given(views(), views())
def test_a_delta_holds_only_what_changed(first, second) -> None:
    publisher = ViewPublisher()
    one = publisher.render(live_book(5, first[0], first[1]), first[2], seq=1, epoch=1)
    assert one is not None
    publisher.published()
    two = publisher.render(live_book(6, second[0], second[1]), second[2], seq=2, epoch=1)
    assert two is not None and two[1] is not None
    before, after, delta = orjson.loads(one[0]), orjson.loads(two[0]), orjson.loads(two[1])
    for name in ("bids", "asks"):
        old = {float(p): [p, q] for p, q in before[name]}
        new = {float(p): [p, q] for p, q in after[name]}
        changed = [new[k] for k in new if old.get(k) != new[k]]
        gone = [[old[k][0], "0"] for k in old if k not in new]
        order = -1 if name == "bids" else 1  # best first, like the view
        assert delta[name] == sorted(changed + gone, key=lambda lv: order * float(lv[0]))


def test_an_unpublished_view_is_never_chained_from() -> None:
    publisher = ViewPublisher()
    quiet = Settings(100.0, 250)
    first = publisher.render(live_book(1, {"9.00": "1"}, {"10.00": "1"}), quiet, seq=1, epoch=1)
    assert first is not None and first[1] is None
    # not reported as published (a follower, or a term that ended): still no chain
    again = publisher.render(live_book(2, {"9.00": "2"}, {"10.00": "1"}), quiet, seq=1, epoch=1)
    assert again is not None and again[1] is None
    publisher.published()
    publisher.forget()  # a new term
    fresh = publisher.render(live_book(3, {"9.00": "3"}, {"10.00": "1"}), quiet, seq=1, epoch=2)
    assert fresh is not None and fresh[1] is None
    publisher.published()  # only what was rendered in this term is chained from
    fourth = publisher.render(live_book(4, {"9.00": "4"}, {"10.00": "1"}), quiet, seq=2, epoch=2)
    assert fourth is not None and fourth[1] is not None
    assert orjson.loads(fourth[1])["prevUpdateId"] == 3


def test_message_bytes() -> None:
    publisher = ViewPublisher()
    wide = Settings(100.0, 250)
    first = publisher.render(
        live_book(9, {"9.00": "1", "8.00": "2"}, {"10.00": "1"}), wide, seq=1, epoch=2
    )
    assert first is not None
    publisher.published()
    second = publisher.render(
        live_book(11, {"9.00": "1", "7.50": "4"}, {"10.00": "1.5"}), wide, seq=2, epoch=2
    )
    assert second is not None
    crc = zlib.crc32(b"9.00:1:10.00:1.5:7.50:4")
    assert second[1] == (
        b'{"symbol":"BTCUSDT","lastUpdateId":11,"prevUpdateId":9,"E":1765432100011,"seq":2,'
        b'"epoch":2,"shard":0,"bids":[["8.00","0"],["7.50","4"]],"asks":[["10.00","1.5"]],'
        b'"checksum":%d}' % crc
    )
    assert second[0].endswith(b'"asks":[["10.00","1.5"]],"checksum":%d}' % crc)


def test_view_side_reads() -> None:
    bids = ViewSide(False, [["9", "1"], ["8", "2"], ["7", "3"]])
    asks = ViewSide(True, [["11", "1"], ["10", "2"]])
    assert bids.best() == ("9", "1") and asks.best() == ("10", "2")
    assert bids.within(8) == [("9", "1"), ("8", "2")]
    assert asks.within(10.5) == [("10", "2")]
    assert ViewSide(True).best() is None


@settings(max_examples=150, deadline=None)
@given(evolutions(max_diffs=30), st.data())
def test_deltas_of_a_book_that_moves_between_views(evolution, data) -> None:
    """One book, diffs applied between views (some rendered and not published, some settings
    changed, some snapshots loaded again): the side's own record of what changed since a view
    gives the same deltas as comparing the messages."""
    sync = BookSync(SYMBOL, buffer_size=1000)
    first = evolution.states[0]
    sync.on_diff(evolution.diffs[0])
    limit = data.draw(st.sampled_from([None, 3, 1000]), label="snapshot limit")
    sync.on_snapshot(rest_snapshot(first, limit), limit)
    publisher = ViewPublisher()
    held: tuple[list[list[str]], list[list[str]]] | None = None  # the view last published
    for index, diff in enumerate(evolution.diffs[1:], start=1):
        if data.draw(st.integers(0, 15), label="snapshot again") == 0:
            sync.on_disconnect()
            sync.on_diff(diff)
            sync.on_snapshot(rest_snapshot(evolution.states[index + 1], limit), limit)
        else:
            sync.on_diff(diff)
        if not sync.is_live:
            break
        view_settings = Settings(
            data.draw(st.sampled_from([5.0, 20.0, 100.0]), label="pct"),
            data.draw(st.sampled_from([2, 4, 250]), label="depth"),
        )
        rendered = publisher.render(sync, view_settings, seq=index, epoch=1)
        if rendered is None:
            break  # the window no longer covers the view: the service resyncs the book
        full_message, delta_message = rendered
        full = orjson.loads(full_message)
        if held is not None:
            assert delta_message is not None
            delta = orjson.loads(delta_message)
            bids, asks = ViewSide(False, held[0]), ViewSide(True, held[1])
            bids.apply(delta["bids"])
            asks.apply(delta["asks"])
            assert (levels(bids), levels(asks)) == (full["bids"], full["asks"])
        if data.draw(st.booleans(), label="published"):
            publisher.published()
            held = full["bids"], full["asks"]

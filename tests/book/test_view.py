"""The published view: exact spread bounds, depth, message shape and bytes."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from decimal import Decimal

import orjson

from marketpipe.book.sync import BookSync
from marketpipe.book.view import book_json, render_view, spread_bounds
from marketpipe.exchange.messages import DepthUpdate

from .test_sync_property import RestSnapshot


@dataclass(frozen=True)
class ViewSettings:
    max_spread_pct: float
    depth: int


def live(bids, asks) -> BookSync:
    sync = BookSync("BTCUSDT")
    sync.on_diff(DepthUpdate(1765432100123, "BTCUSDT", 7, 9, [], []))
    sync.on_snapshot(RestSnapshot(9, list(bids), list(asks)), 5000)
    return sync


def view(sync: BookSync, pct: float, depth: int) -> dict:
    return orjson.loads(render_view(sync, ViewSettings(pct, depth), seq=3, epoch=2))


def test_message_shape_and_exact_strings() -> None:
    sync = live([("61234.01000000", "0.51200000")], [("61234.02000000", "0.00300000")])
    raw = render_view(sync, ViewSettings(35, 250), seq=3, epoch=2)
    # DESIGN §10: the checksum of the view's best 25 levels a side ends the message
    crc = zlib.crc32(b"61234.01000000:0.51200000:61234.02000000:0.00300000")
    assert raw == (
        b'{"symbol":"BTCUSDT","lastUpdateId":9,"E":1765432100123,"seq":3,"epoch":2,"shard":0,'
        b'"bids":[["61234.01000000","0.51200000"]],"asks":[["61234.02000000","0.00300000"]],'
        b'"checksum":%d}' % crc
    )


def test_bounds_are_exact_decimals() -> None:
    assert spread_bounds("99", "101", 5.5) == (Decimal("94.5"), Decimal("105.5"))


def test_levels_exactly_at_the_bounds_are_kept_and_just_beyond_dropped() -> None:
    # mid 100, 10%: bids >= 90, asks <= 110.
    bids = [("99", "1"), ("90.00000000", "2"), ("89.99999999", "3")]
    asks = [("101", "1"), ("110.0", "2"), ("110.00000001", "3")]
    body = view(live(bids, asks), 10, 250)
    assert body["bids"] == [["99", "1"], ["90.00000000", "2"]]
    assert body["asks"] == [["101", "1"], ["110.0", "2"]]


def test_the_float_tie_at_a_bound_is_decided_exactly() -> None:
    # mid 100 and 9.999999999999999 %: the bounds round to the floats 90.0 and 110.0, the keys of
    # the levels "90" and "110", yet those levels lie just outside the exact bounds.
    low, high = spread_bounds("99", "101", 9.999999999999999)
    assert (float(low), float(high)) == (90.0, 110.0)
    assert low > Decimal(90) and high < Decimal(110)
    bids = [("99", "1"), ("90", "2"), ("91", "3")]
    asks = [("101", "1"), ("110", "2"), ("109", "3")]
    body = view(live(bids, asks), 9.999999999999999, 250)
    assert body["bids"] == [["99", "1"], ["91", "3"]]
    assert body["asks"] == [["101", "1"], ["109", "3"]]


def test_depth_keeps_the_best_levels() -> None:
    bids = [(f"{100 - i}", "1") for i in range(10)]
    asks = [(f"{101 + i}", "1") for i in range(10)]
    body = view(live(bids, asks), 100, 3)
    assert [p for p, _ in body["bids"]] == ["100", "99", "98"]
    assert [p for p, _ in body["asks"]] == ["101", "102", "103"]


def test_a_one_sided_book_is_not_filtered() -> None:
    sync = live([("100", "1"), ("1", "1")], [])
    assert book_json(sync.book, 1, 250) == (b'["100","1"],["1","1"]', b"")

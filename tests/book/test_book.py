"""OrderBook: set-not-add, removals, exact strings, the snapshot window and pruning."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.book import book as book_module
from marketpipe.book.book import OrderBook
from marketpipe.book.levels import (
    INF,
    BadLevel,
    checked_numbers,
    decode_fragment,
    encode_level,
)


def book(bids=(), asks=(), limit: int | None = 1000) -> OrderBook:
    result = OrderBook()
    result.load(list(bids), list(asks), limit)
    return result


def test_set_not_add_and_zero_removes() -> None:
    b = book(bids=[("10.00", "1.00000000")])
    b.apply([("10.00", "2.50000000")], [])
    assert b.bids.levels() == [("10.00", "2.50000000")]
    b.apply([("10.00", "0.00000000")], [])
    assert b.bids.levels() == []


def test_removing_an_absent_level_is_harmless() -> None:
    b = book(bids=[("10.00", "1")], asks=[("11.00", "1")])
    b.apply([("9.00", "0")], [("12.00", "0.00000000")])
    assert b.bids.levels() == [("10.00", "1")]
    assert b.asks.levels() == [("11.00", "1")]


def test_sides_are_ordered_best_first() -> None:
    b = book(bids=[("9.5", "1"), ("10.25", "2"), ("9.75", "3")], asks=[("12", "1"), ("11", "2")])
    assert [p for p, _ in b.bids.levels()] == ["10.25", "9.75", "9.5"]
    assert [p for p, _ in b.asks.levels()] == ["11", "12"]
    assert b.bids.levels(2) == [("10.25", "2"), ("9.75", "3")]


def test_strings_are_published_byte_identical() -> None:
    b = book(bids=[("61234.01000000", "0.51200000")])
    assert b.bids.fragments() == [b'["61234.01000000","0.51200000"]']
    assert decode_fragment(encode_level("0.00001234", "12345678901.00")) == (
        "0.00001234",
        "12345678901.00",
    )


def test_a_spelling_only_float_takes_keeps_its_string() -> None:
    """Non-ASCII digits (``float()`` reads them) go out as they came, and the best price too."""
    b = book(bids=[("\u0661\u0660", "1")], asks=[("11", "1")], limit=None)
    assert b.bids.best_price() == "\u0661\u0660"
    assert b.bids.fragments() == ['["\u0661\u0660","1"]'.encode()]


def test_equal_prices_written_differently_are_one_level() -> None:
    b = book(bids=[("10.0", "1")])
    b.apply([("10.00000000", "2")], [])
    assert b.bids.levels() == [("10.00000000", "2")]


@pytest.mark.parametrize(
    ("level", "kind"),
    [
        (("-1", "1"), "price"),
        (("0", "1"), "price"),
        (("inf", "1"), "price"),
        (("1", "-0.5"), "quantity"),
        (("1", "nan"), "quantity"),
        (("x", "1"), "number"),
        (("1234567.0000000001", "1"), "precision"),
    ],
)
def test_impossible_levels_are_refused(level: tuple[str, str], kind: str) -> None:
    with pytest.raises(BadLevel) as err:
        book().apply([level], [])
    assert err.value.kind == kind


def test_a_complete_side_accepts_levels_anywhere() -> None:
    b = book(bids=[("10", "1"), ("9", "1")], limit=5)  # 2 < 5 levels: the whole side
    b.apply([("1", "4")], [])
    assert b.bids.levels()[-1] == ("1", "4")


def test_a_truncated_side_ignores_levels_beyond_its_window() -> None:
    bids = [("10", "1"), ("9.75", "1"), ("9.25", "1"), ("9", "1")]
    asks = [("11", "1"), ("11.25", "1"), ("11.75", "1"), ("12", "1")]
    b = book(bids, asks, limit=4)  # 4 of 4 levels: the sides go further than the snapshot
    b.apply([("8", "4"), ("9.5", "2")], [("13", "1"), ("11.5", "3")])
    assert [p for p, _ in b.bids.levels()] == ["10", "9.75", "9.5", "9.25", "9"]
    assert [p for p, _ in b.asks.levels()] == ["11", "11.25", "11.5", "11.75", "12"]
    assert b.bids.covers("9") and not b.bids.covers("8.99")
    assert b.asks.covers("12") and not b.asks.covers("12.01")


def test_unknown_limit_is_treated_as_truncated() -> None:
    b = book(bids=[("10", "1"), ("9", "1")], limit=None)
    b.apply([("8", "4")], [])
    assert len(b.bids) == 2


def test_growth_past_the_cap_prunes_the_worst_levels_and_moves_the_window_in() -> None:
    b = book(bids=[("100", "1"), ("90", "1"), ("80", "1"), ("70", "1")], limit=4)
    b.apply([(str(95 - i), "1") for i in range(0, 5)], [])  # 9 levels > 4 + 4 // 4
    assert [p for p, _ in b.bids.levels()] == ["100", "95", "94", "93"]
    assert not b.bids.covers("92.5")
    b.apply([("92", "5")], [])  # beyond the new window: ignored
    assert len(b.bids) == 4


def test_crossed() -> None:
    assert not book(bids=[("10", "1")], asks=[("10.01", "1")]).is_crossed()
    assert book(bids=[("10", "1")], asks=[("10", "1")]).is_crossed()
    assert not book(bids=[("10", "1")]).is_crossed()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 10**9).map(lambda t: f"{t // 10**4}.{t % 10**4:04d}"),
            st.sampled_from(["0", "0.0", "1.5", "2", "0.00000001"]),
        ),
        max_size=60,
    )
)
def test_a_complete_book_matches_a_dict_model(changes: list[tuple[str, str]]) -> None:
    b = book(limit=5000)
    model: dict[str, str] = {}
    for price, quantity in changes:
        b.apply([(price, quantity)], [])
        if float(quantity):
            model = {p: q for p, q in model.items() if float(p) != float(price)}
            model[price] = quantity
        else:
            model = {p: q for p, q in model.items() if float(p) != float(price)}
    assert b.bids.levels() == sorted(model.items(), key=lambda lv: -float(lv[0]))


side_changes = st.lists(
    st.lists(
        st.tuples(
            st.integers(1, 120).map(lambda t: f"{t / 4:.2f}"),
            st.sampled_from(["0", "0.00000000", "1.5", "2", "0.00000001"]),
        ),
        max_size=12,
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    snapshot=st.dictionaries(st.integers(1, 120).map(lambda t: f"{t / 4:.2f}"), st.just("7")),
    diffs=side_changes,
    limit=st.sampled_from([None, 3, 10, 1000]),
    chunk=st.sampled_from([1, 2, 3, 8]),
    is_ask=st.booleans(),
)
def test_chunked_side_matches_a_dict_model_in_its_window(
    snapshot: dict[str, str],
    diffs: list[list[tuple[str, str]]],
    limit: int | None,
    chunk: int,
    is_ask: bool,
) -> None:
    """Tiny chunks so that splits, merges and pruning happen all the time."""
    best_first = (lambda p: float(p)) if is_ask else (lambda p: -float(p))
    levels = sorted(snapshot.items(), key=lambda lv: best_first(lv[0]))
    if limit is not None:
        levels = levels[:limit]
    with patch.object(book_module, "CHUNK", chunk):
        b = book(levels, levels, limit)
        side = b.asks if is_ask else b.bids
        model = dict(levels)
        for changes in diffs:
            b.apply([], changes) if is_ask else b.apply(changes, [])
            for price, quantity in changes:
                if float(quantity):
                    model[price] = quantity
                else:
                    model.pop(price, None)
            expected = sorted(
                ((p, q) for p, q in model.items() if side.covers(p)),
                key=lambda lv: best_first(lv[0]),
            )
            assert side.levels() == expected
            assert len(side) == len(expected)
            cap = limit if limit is not None else max(len(levels), 1)
            assert len(side) <= cap + cap // 4
            layout = side.layout()
            assert all(0 < len(keys) <= 2 * chunk for keys, _, _ in layout)
            assert side.chunk_bests() == [keys[-1] for keys, _, _ in layout]
            assert [len(blob) for _, _, blob in layout] == [sum(n) for _, n, _ in layout]
            for depth in (0, 1, 3, len(side) + 1):
                body = side.best_json(depth)
                assert body == b",".join(encode_level(p, q) for p, q in expected[:depth])
            assert [k for keys, _, _ in layout for k in keys] == sorted(
                -float(p) if is_ask else float(p) for p, _ in expected
            )
            for rank, (price, _) in enumerate(expected, start=1):
                key = -float(price) if is_ask else float(price)
                count, tie = side.levels_from(key)
                assert count == rank and tie is not None and decode_fragment(tie)[0] == price


decimal_strings = st.one_of(
    st.builds(
        "{}.{:08d}".format, st.integers(0, 10**9), st.integers(0, 10**8 - 1)
    ),  # the exchange's own spelling
    st.from_regex(r"[0-9]{1,25}(\.[0-9]{1,25})?", fullmatch=True),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(decimal_strings, decimal_strings), max_size=20))
def test_checked_numbers_are_exactly_float_of_the_strings(levels: list[tuple[str, str]]) -> None:
    """One C-level conversion stands in for float() on every price and quantity: same values."""
    valid = [(p, q) for p, q in levels if float(p) > 0 and float(p) < INF and float(q) < INF]
    bids, asks = checked_numbers(valid, valid[::-1])
    assert bids == [(float(p), float(q)) for p, q in valid]
    assert asks == [(float(p), float(q)) for p, q in valid[::-1]]


@pytest.mark.parametrize("spelling", [" 1", "1.", ".5", "+1", "1_0", "1e2", "01"])
def test_spellings_float_takes_are_still_taken(spelling: str) -> None:
    """JSON's number grammar is narrower than float()'s: the slow path keeps float()'s rules."""
    assert checked_numbers([("10", spelling)], [(spelling, "1")]) == (
        [(10.0, float(spelling))],
        [(float(spelling), 1.0)],
    )


def test_a_level_too_long_to_publish_is_refused() -> None:
    with pytest.raises(BadLevel) as err:
        book().apply([("1", "1." + "0" * 300)], [])
    assert err.value.kind == "quantity"
    with pytest.raises(BadLevel):
        book(bids=[("1", "1." + "0" * 300)])

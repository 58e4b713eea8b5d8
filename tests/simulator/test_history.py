"""The pure trade history: klines, rolling windows, aggregate trades and the average price, each
checked against a brute-force sum over every trade ever made."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.simulator.history import (
    DAY,
    HOUR,
    KLINE_INTERVALS,
    MINUTE,
    MONTH,
    SECOND,
    TRADE_HISTORY,
    Bar,
    Trade,
    TradeHistory,
    kline_next,
    kline_open,
    parse_time_zone,
    parse_window,
)
from marketpipe.simulator.units import SCALE

LISTED = 1_765_432_100_123  # 2025-12-11 05:48:20.123 UTC
PRICE = 61_234 * SCALE


def make_history(gaps: list[int], sizes: list[int]) -> tuple[TradeHistory, list[Trade], int]:
    """A history fed sweeps ``gaps[i]`` ms apart; returns it, every trade and the last time."""
    history = TradeHistory(LISTED, PRICE)
    made: list[Trade] = []
    now, trade_id, price = LISTED, 5000, PRICE
    for i, (gap, size) in enumerate(zip(gaps, sizes, strict=False)):
        now += gap
        buyer_maker = i % 3 == 0
        step = -SCALE // 100 if buyer_maker else SCALE // 100  # sells sweep down, buys up
        sweep = []
        for _ in range(size):
            price += step
            sweep.append(Trade(trade_id, price, (trade_id % 7 + 1) * 1000, now, buyer_maker))
            trade_id += 1
        history.record(sweep)
        made.extend(sweep)
    return history, made, now


def truth(made: list[Trade], open_time: int, close_time: int) -> Bar:
    before = [t.price for t in made if t.time < open_time]
    price = before[-1] if before else PRICE
    bar = Bar(open_time, close_time, price, price, price, price)
    for trade in made:
        if open_time <= trade.time <= close_time:
            bar.add(trade)
    return bar


gaps = st.lists(
    st.one_of(st.integers(0, 3 * SECOND), st.integers(0, 10 * MINUTE), st.integers(0, 9 * HOUR)),
    min_size=1,
    max_size=60,
)
sizes = st.lists(st.integers(1, 40), min_size=60, max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    gaps=gaps,
    sizes=sizes,
    interval=st.sampled_from(sorted(KLINE_INTERVALS)),
    zone=st.sampled_from(["0", "8", "-5", "+05:45"]),
    limit=st.integers(1, 1000),
    later=st.integers(0, 3 * HOUR),
    anchor=st.sampled_from(["latest", "start", "end"]),
)
def test_klines_are_exact_sums_of_the_trades(
    gaps: list[int],
    sizes: list[int],
    interval: str,
    zone: str,
    limit: int,
    later: int,
    anchor: str,
) -> None:
    history, made, last_trade = make_history(gaps, sizes)
    now = last_trade + later
    width, offset = KLINE_INTERVALS[interval], parse_time_zone(zone)
    start = end = None
    if anchor == "start":
        start = LISTED + (now - LISTED) // 3
    elif anchor == "end":
        end = LISTED + (now - LISTED) * 2 // 3
    bars = history.klines(width, now, limit, start=start, end=end, offset=offset)
    assert len(bars) <= limit
    for bar in bars:
        assert bar.open_time == kline_open(bar.open_time, width, offset)
        assert bar.close_time == kline_next(bar.open_time, width, offset) - 1
        assert bar == truth(made, bar.open_time, bar.close_time)
    for a, b in pairwise(bars):
        assert b.open_time == a.close_time + 1, "consecutive klines, none skipped"
    if start is not None and bars:
        assert bars[0].open_time >= start
    if anchor == "latest":
        assert bars and bars[-1].open_time == kline_open(now, width, offset)
    if anchor == "end" and bars:
        assert bars[-1].open_time == kline_open(end, width, offset)  # type: ignore[arg-type]
    young = now - LISTED < DAY and len(made) <= TRADE_HISTORY
    if anchor == "latest" and young and len(bars) < limit:
        assert bars[0].open_time == kline_open(LISTED, width, offset), "nothing kept is left out"


@settings(max_examples=60, deadline=None)
@given(gaps=gaps, sizes=sizes, size=st.sampled_from(["1m", "7m", "59m", "1h", "23h", "1d", "7d"]))
def test_rolling_windows_are_exact_sums_of_the_trades(
    gaps: list[int], sizes: list[int], size: str
) -> None:
    history, made, now = make_history(gaps, sizes)
    bar = history.window(parse_window(size), now)
    requested = now // MINUTE * MINUTE - parse_window(size)
    assert bar.close_time == now
    assert bar.open_time >= requested
    if now - LISTED < DAY:
        assert bar.open_time == requested
    else:
        assert bar.open_time - requested < HOUR
    assert bar == truth(made, bar.open_time, now)


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 2 * SECOND), min_size=1, max_size=60),
    sizes=sizes,
    limit=st.integers(1, 1000),
    use_from=st.booleans(),
    use_start=st.booleans(),
    use_end=st.booleans(),
)
def test_trade_selection(
    gaps: list[int],
    sizes: list[int],
    limit: int,
    use_from: bool,
    use_start: bool,
    use_end: bool,
) -> None:
    history, made, now = make_history(gaps, sizes)
    kept = made[-TRADE_HISTORY:]
    from_id = kept[len(kept) // 4].id if use_from else None
    start = made[len(made) // 3].time if use_start else None
    end = made[len(made) * 3 // 4].time if use_end else None
    got = history.select(limit, from_id, start, end)
    matching = [
        t
        for t in kept
        if (from_id is None or t.id >= from_id)
        and (start is None or t.time >= start)
        and (end is None or t.time <= end)
    ]
    assert got == (matching[:limit] if use_from or use_start else matching[-limit:])
    price, last_time = history.avg_price(now)
    recent = [t for t in made if t.time >= now - 5 * MINUTE]
    assert last_time == made[-1].time
    if len(made) <= TRADE_HISTORY:
        volume = sum(t.qty for t in recent)
        assert price == sum(t.price * t.qty for t in recent) // volume


def test_a_fresh_symbol_has_flat_empty_klines_from_listing() -> None:
    history = TradeHistory(LISTED, PRICE)
    now = LISTED + 3 * MINUTE + 5
    bars = history.klines(MINUTE, now, 500)
    first = kline_open(LISTED, MINUTE)
    assert [b.open_time for b in bars] == [first + i * MINUTE for i in range(4)]
    assert all(b.count == 0 and b.first_id == b.last_id == -1 for b in bars)
    assert all(b.open == b.high == b.low == b.close == PRICE for b in bars)
    assert history.avg_price(now) == (PRICE, LISTED)
    assert history.klines(MINUTE, now, 500, start=now + 1) == []
    assert history.klines(MINUTE, now, 500, end=LISTED - DAY) == []


def test_kline_boundaries() -> None:
    def ms(*parts: int) -> int:
        return int(datetime(*parts, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]

    t = ms(2025, 12, 11, 5, 48, 20)
    assert kline_open(t, KLINE_INTERVALS["1w"]) == ms(2025, 12, 8)  # a Monday
    assert kline_open(t, MONTH) == ms(2025, 12, 1)
    assert kline_next(ms(2025, 12, 1), MONTH) == ms(2026, 1, 1)
    assert kline_next(ms(2026, 1, 1), MONTH) == ms(2026, 2, 1)
    assert kline_open(t, DAY, 8 * HOUR) == ms(2025, 12, 10, 16)  # midnight in UTC+8
    assert kline_open(t, MONTH, -5 * HOUR) == ms(2025, 12, 1, 5)
    assert kline_open(t, HOUR, parse_time_zone("+05:45")) == ms(2025, 12, 11, 5, 15)


def test_time_zones_and_window_sizes() -> None:
    assert parse_time_zone("0") == 0
    assert parse_time_zone("-1:00") == -HOUR
    assert parse_time_zone("14") == 14 * HOUR
    assert parse_window("59m") == 59 * MINUTE and parse_window("7d") == 7 * DAY
    for bad in ("15", "-13", "+5:60", "x", "1:5"):
        with pytest.raises(ValueError):
            parse_time_zone(bad)
    for bad in ("60m", "24h", "8d", "1d2h", "0m", "1s", "m"):
        with pytest.raises(ValueError):
            parse_window(bad)

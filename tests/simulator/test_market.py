"""The pure market model: book invariants, contiguous diffs, exact strings, determinism."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.simulator.history import Trade, TradeLog
from marketpipe.simulator.market import DIFF_DEPTH_LIMIT, Market, SymbolMarket, make_specs
from marketpipe.simulator.units import fmt, parse_units

seeds = st.integers(min_value=0, max_value=2**32)


def apply(book: dict[str, dict[str, str]], bids: list[list[str]], asks: list[list[str]]) -> None:
    for side, levels in (("bids", bids), ("asks", asks)):
        for price, qty in levels:
            if parse_units(qty) == 0:
                book[side].pop(price, None)
            else:
                book[side][price] = qty


def as_maps(depth: dict) -> dict[str, dict[str, str]]:
    return {"bids": dict(map(tuple, depth["bids"])), "asks": dict(map(tuple, depth["asks"]))}


def check_book(sym: SymbolMarket) -> None:
    depth = sym.depth()
    bids = [(parse_units(p), parse_units(q)) for p, q in depth["bids"]]
    asks = [(parse_units(p), parse_units(q)) for p, q in depth["asks"]]
    assert bids and asks
    assert bids[0][0] < asks[0][0], "crossed book"
    assert [p for p, _ in bids] == sorted({p for p, _ in bids}, reverse=True)
    assert [p for p, _ in asks] == sorted({p for p, _ in asks})
    for price, qty in bids + asks:
        assert qty > 0
        assert price % sym.spec.tick == 0 and qty % sym.spec.step == 0
    for price, qty in depth["bids"] + depth["asks"]:
        assert len(price.split(".")[1]) == 8 and len(qty.split(".")[1]) == 8
    assert len(bids) == sym.bid_levels and len(asks) == sym.ask_levels


@settings(max_examples=15, deadline=None)
@given(seed=seeds, steps=st.integers(min_value=1, max_value=120), count=st.integers(1, 30))
def test_book_invariants_and_diffs_replay_exactly(seed: int, steps: int, count: int) -> None:
    market = Market.create(count, seed, levels=200)
    sym = list(market.symbols.values())[-1]
    local = as_maps(sym.depth())
    last_id = sym.update_id
    for i in range(steps):
        result = sym.step(i)
        if result.diff is None:
            continue
        assert result.diff.first_id == last_id + 1, "diffs must be contiguous"
        assert result.diff.last_id >= result.diff.first_id
        last_id = result.diff.last_id
        apply(local, *sym.diff_sides(result.diff))
    assert sym.update_id == last_id
    check_book(sym)
    assert local == as_maps(sym.depth())


@settings(max_examples=10, deadline=None)
@given(seed=seeds)
def test_same_seed_same_market(seed: int) -> None:
    a, b = Market.create(3, seed, levels=100), Market.create(3, seed, levels=100)
    for i in range(50):
        for name in a.symbols:
            # order of stepping differs between the two markets: must not matter
            a.symbols[name].step(i)
        for name in reversed(list(b.symbols)):
            b.symbols[name].step(i)
    for name in a.symbols:
        assert a.symbols[name].depth() == b.symbols[name].depth()
        assert list(a.symbols[name].trades) == list(b.symbols[name].trades)
    c = Market.create(3, seed + 1, levels=100)
    assert c.symbols["BTCUSDT"].depth() != a.symbols["BTCUSDT"].depth()


def test_trades_update_ticker_consistently() -> None:
    sym = Market.create(1, 3, levels=200).symbols["BTCUSDT"]
    before = sym.ticker(0)
    trades = [t for i in range(300) for t in sym.step(i).trades]
    assert trades, "a few hundred steps make trades"
    after = sym.ticker(1)
    assert after["L"] == trades[-1].id == before["L"] + len(trades)
    assert after["n"] == before["n"] + len(trades)
    assert after["c"] == fmt(trades[-1].price) and after["Q"] == fmt(trades[-1].qty)
    volume = sum(t.qty for t in trades)
    assert parse_units(after["v"]) == parse_units(before["v"]) + volume
    assert parse_units(after["h"]) >= max(t.price for t in trades)
    assert parse_units(after["l"]) <= min(t.price for t in trades)
    assert [t.id for t in trades] == list(range(trades[0].id, trades[0].id + len(trades)))
    change = parse_units(after["c"]) - parse_units(after["o"])
    assert parse_units(after["p"]) == change


def test_diffs_change_a_realistic_number_of_levels() -> None:
    sym = Market.create(1, 5, levels=1000).symbols["BTCUSDT"]
    sizes = [len(d) for i in range(500) if (d := sym.step(i).diff) is not None]
    assert 3 <= sum(sizes) / len(sizes) <= 30
    assert min(sizes) <= 3 and max(sizes) >= 20


def test_diffs_report_only_the_top_5000_levels() -> None:
    sym = Market.create(1, 9, levels=DIFF_DEPTH_LIMIT + 300).symbols["BTCUSDT"]
    reported = hidden = 0
    for i in range(200):
        before = sym.update_id
        diff = sym.step(i).diff
        if diff is None:
            continue
        assert diff.first_id == before + 1
        for book, changes in ((sym.bids, diff.bids), (sym.asks, diff.asks)):
            assert all(book.rank(u) <= DIFF_DEPTH_LIMIT for u in changes)
        reported += len(diff)
        hidden += diff.last_id - diff.first_id + 1 - len(diff)
    assert reported and hidden, "some changes fall deeper than 5000 levels and stay unreported"


def test_spread_stays_tight_and_books_full_for_hours() -> None:
    # 20 000 intervals is over half an hour at 10 diffs/s: the spread must not creep wider, the
    # mid must wander both ways across symbols, and both sides must keep their depth.
    market = Market.create(4, 2, levels=200)
    moved = []
    for sym in market.symbols.values():
        start = sym.best_bid + sym.best_ask
        spreads = []
        for i in range(20_000):
            sym.step(i)
            spreads.append(sym.best_ask - sym.best_bid)
        assert sum(spreads[-5000:]) / 5000 < 10, "the spread must stay a few ticks"
        assert sym.bid_levels > 150 and sym.ask_levels > 150
        check_book(sym)
        moved.append(sym.best_bid + sym.best_ask - start)
    assert any(m > 0 for m in moved) and any(m < 0 for m in moved), moved


def test_symbol_names_are_plausible_and_valid() -> None:
    specs = make_specs(2000, 1)
    names = [s.symbol for s in specs]
    assert names[:3] == ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    assert len(set(names)) == 2000
    assert all(n.isalnum() and n.isupper() and len(n) <= 20 for n in names)
    assert all(s.price % s.tick == 0 and s.price // s.tick >= 3000 for s in specs)


@given(st.integers(min_value=-(10**20), max_value=10**20))
def test_fmt_round_trips(units: int) -> None:
    text = fmt(units)
    assert parse_units(text) == units
    assert len(text.split(".")[1]) == 8


def test_two_thousand_symbols_step_and_stay_valid() -> None:
    market = Market.create(2000, 11, levels=50)
    assert len(market.symbols) == 2000
    for i in range(3):
        for sym in market.symbols.values():
            sym.step(i)
    for sym in list(market.symbols.values())[::97]:
        check_book(sym)


@given(st.integers(min_value=0, max_value=50), st.integers(min_value=1, max_value=60))
def test_trade_log_keeps_the_last_trades_in_order(count: int, ask: int) -> None:
    log = TradeLog(capacity=16)
    made = [Trade(100 + i, 5 * i, 7 * i, 1000 + i, i % 2 == 0) for i in range(count)]
    for trade in made:
        log.append(trade)
    assert len(log) == min(count, 16)
    assert log.last(ask) == made[-min(ask, 16, count) :] if count else log.last(ask) == []


def test_a_cheap_pair_with_a_deep_book_never_bids_at_zero_or_below() -> None:
    # XRPUSDT trades near 0.5 with a 0.0001 tick: 5000 levels a side would reach below zero.
    market = Market.create(50, seed=7, levels=5000)
    for symbol in market.symbols.values():
        for step in range(50):
            symbol.step(step)
        check_book(symbol)
        assert all(parse_units(price) > 0 for price, _ in symbol.depth()["bids"]), symbol.symbol

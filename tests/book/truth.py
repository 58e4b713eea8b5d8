"""A true book evolution for the property tests: diffs with contiguous ids, never crossed.

Bids live on ticks 1..50 and asks on 51..100, so the truth is never crossed. Prices are written
with two decimals and quantities in a few exchange-like spellings, so exact strings are tested.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import strategies as st

from marketpipe.exchange.messages import DepthUpdate

SYMBOL = "BTCUSDT"
QUANTITIES = ("0.50000000", "1.25", "3", "0.00000001", "12.10000000")
ZEROS = ("0.00000000", "0", "0.0")

Side = dict[str, str]  # price -> quantity
Levels = list[list[str]]


def true_view(bids: Levels, asks: Levels, pct: float, depth: int) -> tuple[Levels, Levels]:
    """DESIGN §5 written independently of the service (sides best first): Decimal mid, inclusive
    bounds, then the best ``depth`` levels."""
    if not bids or not asks:
        return bids[:depth], asks[:depth]
    mid = (Decimal(bids[0][0]) + Decimal(asks[0][0])) / 2
    share = Decimal(repr(pct)) / 100
    low, high = mid * (1 - share), mid * (1 + share)
    inside_bids = itertools.takewhile(lambda level: Decimal(level[0]) >= low, bids)
    inside_asks = itertools.takewhile(lambda level: Decimal(level[0]) <= high, asks)
    return list(itertools.islice(inside_bids, depth)), list(itertools.islice(inside_asks, depth))


def price(tick: int) -> str:
    return f"{tick // 100}.{tick % 100:02d}"


@dataclass
class State:
    update_id: int
    bids: Side
    asks: Side


@dataclass
class Evolution:
    states: list[State]  # states[0]: the start; states[i]: after diffs[i - 1]
    diffs: list[DepthUpdate]

    def state_at(self, update_id: int) -> State:
        return next(s for s in self.states if s.update_id == update_id)


def _apply(side: Side, changes: list[tuple[str, str]]) -> Side:
    side = dict(side)
    for p, q in changes:
        if float(q) == 0:
            side.pop(p, None)
        else:
            side[p] = q
    return side


@st.composite
def evolutions(draw: st.DrawFn, max_diffs: int = 25) -> Evolution:
    bid_ticks = st.integers(101, 150)
    ask_ticks = st.integers(151, 200)
    quantity = st.sampled_from(QUANTITIES)
    level_change = st.one_of(quantity, st.sampled_from(ZEROS))
    bids = draw(st.dictionaries(bid_ticks.map(price), quantity, max_size=8))
    asks = draw(st.dictionaries(ask_ticks.map(price), quantity, max_size=8))
    state = State(draw(st.integers(1, 10**6)), bids, asks)
    states, diffs = [state], []
    for event_time in range(draw(st.integers(1, max_diffs))):
        bid_changes = list(draw(st.dictionaries(bid_ticks.map(price), level_change)).items())
        ask_changes = list(draw(st.dictionaries(ask_ticks.map(price), level_change)).items())
        first = state.update_id + 1
        last = first + draw(st.integers(0, 3))
        diffs.append(DepthUpdate(event_time, SYMBOL, first, last, bid_changes, ask_changes))
        state = State(last, _apply(state.bids, bid_changes), _apply(state.asks, ask_changes))
        states.append(state)
    return Evolution(states, diffs)

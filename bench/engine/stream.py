"""A deterministic recorded-like stream of Binance combined diff frames for the engine benchmark.

The simulator's market model was not committed when this benchmark was written, so this small
generator stands in (same seed, same bytes, every run). Shape, from watching real ``@depth@100ms``
streams: 5000 levels a side per pair, changes concentrated at the top (level index drawn from a
geometric distribution), ~55% quantity changes, ~25% new levels, ~20% removals, 1-40 levels per
frame, update ids advancing by at least the number of changed levels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import orjson
from sortedcontainers import SortedList

SCALE = 10**8
BASES = (
    "BTC",
    "ETH",
    "BNB",
    "SOL",
    "XRP",
    "DOGE",
    "ADA",
    "TRX",
    "AVAX",
    "LINK",
    "DOT",
    "MATIC",
    "TON",
    "SHIB",
    "LTC",
    "BCH",
    "UNI",
    "ATOM",
    "XLM",
    "ETC",
    "FIL",
    "APT",
    "NEAR",
    "ARB",
    "OP",
    "INJ",
    "SUI",
    "SEI",
    "TIA",
    "RNDR",
    "IMX",
    "STX",
    "HBAR",
    "VET",
    "ALGO",
    "GRT",
    "AAVE",
    "MKR",
    "SNX",
    "CRV",
    "LDO",
    "RUNE",
    "EGLD",
    "SAND",
    "MANA",
    "AXS",
    "FTM",
    "KAVA",
    "ZEC",
    "DASH",
)


def fmt(units: int) -> str:
    """Fixed 8-decimal string from integer units of 1e-8, as Binance writes them."""
    return f"{units // SCALE}.{units % SCALE:08d}"


@dataclass
class TrueSide:
    is_ask: bool
    ticks: SortedList = field(default_factory=SortedList)
    qty: dict[int, int] = field(default_factory=dict)

    def index_tick(self, index: int) -> int:
        """Tick of the level ``index`` away from the best (clamped)."""
        index = min(index, len(self.ticks) - 1)
        return self.ticks[index] if self.is_ask else self.ticks[-1 - index]

    def levels(self, tick_units: int) -> list[list[str]]:
        ordered = self.ticks if self.is_ask else reversed(self.ticks)
        return [[fmt(t * tick_units), fmt(self.qty[t])] for t in ordered]


@dataclass
class TruePair:
    symbol: str
    tick_units: int
    bids: TrueSide
    asks: TrueSide
    update_id: int

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "lastUpdateId": self.update_id,
                "bids": self.bids.levels(self.tick_units),
                "asks": self.asks.levels(self.tick_units),
            }
        )


def _new_pair(rng: random.Random, symbol: str, levels: int) -> TruePair:
    tick_units = rng.choice((1, 10, 100, 1000, 10**4, 10**6))
    mid = rng.randrange(10**5, 10**7)
    bids, asks = TrueSide(is_ask=False), TrueSide(is_ask=True)
    tick = mid
    for _ in range(levels):
        tick -= rng.randint(1, 3)
        bids.ticks.add(tick)
        bids.qty[tick] = rng.randrange(1, 50 * SCALE)
    tick = mid + 1
    for _ in range(levels):
        tick += rng.randint(1, 3)
        asks.ticks.add(tick)
        asks.qty[tick] = rng.randrange(1, 50 * SCALE)
    return TruePair(symbol, tick_units, bids, asks, rng.randrange(10**9, 10**10))


def _change(rng: random.Random, pair: TruePair, side: TrueSide) -> tuple[int, int]:
    """One true change on ``side``: (tick, new quantity; 0 removes)."""
    index = min(int(rng.expovariate(1 / 25)), 4999)
    roll = rng.random()
    if roll < 0.55 or len(side.ticks) < 100:
        tick = side.index_tick(index)
        quantity = rng.randrange(1, 50 * SCALE)
    elif roll < 0.80:
        anchor = side.index_tick(index)
        tick = anchor + (-1 if side.is_ask else 1) * rng.randint(1, 2)
        other = pair.bids if side.is_ask else pair.asks
        best_other = other.ticks[-1] if side.is_ask else other.ticks[0]
        if (side.is_ask and tick <= best_other) or (not side.is_ask and tick >= best_other):
            tick = anchor
        quantity = rng.randrange(1, 50 * SCALE)
    else:
        tick = side.index_tick(index)
        quantity = 0
    if quantity:
        if tick not in side.qty:
            side.ticks.add(tick)
        side.qty[tick] = quantity
    elif tick in side.qty:
        side.ticks.remove(tick)
        del side.qty[tick]
    return tick, quantity


def _frame(rng: random.Random, pair: TruePair, event_time: int) -> bytes:
    changes: dict[bool, dict[int, int]] = {False: {}, True: {}}
    count = rng.randint(1, 40)
    for _ in range(count):
        side = pair.asks if rng.random() < 0.5 else pair.bids
        tick, quantity = _change(rng, pair, side)
        changes[side.is_ask][tick] = quantity
    first = pair.update_id + 1
    pair.update_id += count + rng.randint(0, 5)
    units = pair.tick_units
    return orjson.dumps(
        {
            "stream": f"{pair.symbol.lower()}@depth@100ms",
            "data": {
                "e": "depthUpdate",
                "E": event_time,
                "s": pair.symbol,
                "U": first,
                "u": pair.update_id,
                "b": [[fmt(t * units), fmt(q)] for t, q in changes[False].items()],
                "a": [[fmt(t * units), fmt(q)] for t, q in changes[True].items()],
            },
        }
    )


@dataclass
class Recording:
    """Per pair: a first frame, the snapshot taken right after it; then the timed frames."""

    symbols: list[str]
    first_frames: list[bytes]
    snapshots: list[bytes]
    frames: list[bytes]
    final_books: dict[str, bytes]


def record(pairs: int = 50, frames: int = 200_000, levels: int = 5000, seed: int = 7) -> Recording:
    rng = random.Random(seed)
    book = [_new_pair(rng, f"{base}USDT", levels) for base in BASES[:pairs]]
    event_time = 1_765_432_100_000
    first_frames = [_frame(rng, pair, event_time) for pair in book]
    snapshots = [pair.snapshot() for pair in book]
    timed = []
    for _ in range(frames):
        event_time += rng.randint(0, 3)
        timed.append(_frame(rng, book[int(rng.paretovariate(1.2)) % pairs], event_time))
    return Recording(
        symbols=[p.symbol for p in book],
        first_frames=first_frames,
        snapshots=snapshots,
        frames=timed,
        final_books={p.symbol: p.snapshot() for p in book},
    )

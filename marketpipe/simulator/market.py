"""The simulator's market: evolving order books, trades and 24 h statistics, with no I/O.

Everything is integer arithmetic: a price is a tick index times the symbol's tick size and a
quantity a number of lot steps, both in units of 1e-8 (Binance's 8 decimals). Strings are made
only when an event is asked for. Each symbol owns its random generator, so its history depends on
the seed and on how many steps it has taken, never on the order in which symbols are stepped.

A book side lives in one flat ``array`` of quantities indexed by tick: bids are the non-zero
entries at or below the best bid, asks those at or above the best ask. This keeps thousands of
levels per side for thousands of symbols in tens of megabytes, and the best price after a removal
is the next non-zero entry, a short scan because books are dense near the top.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

SCALE = 100_000_000  # 1e8: the unit of every price and quantity
DAY_MS = 86_400_000
DIFF_DEPTH_LIMIT = 5000  # diff events report changes only within the top 5000 levels a side
TRADE_HISTORY = 1000  # trades kept per symbol (REST /trades serves at most 1000)
ALL_STATUSES = ("TRADING", "HALT", "BREAK")

BID = 0
ASK = 1


_LEVEL = '["%d.%08d","%d.%08d"]'
_DIFF = '{"e":"depthUpdate","E":%d,"s":"%s","U":%d,"u":%d,"b":[%s],"a":[%s]}'


def fmt(units: int) -> str:
    """Integer 1e-8 units -> Binance's fixed 8-decimal string."""
    if units < 0:
        return "-" + fmt(-units)
    digits = "%09d" % units  # noqa: UP031 (the fastest form measured)
    return digits[:-8] + "." + digits[-8:]


def parse_units(text: str) -> int:
    """Binance decimal string -> integer 1e-8 units (exact; more than 8 decimals is an error)."""
    negative = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    if len(frac) > 8 or not (whole + frac).isdigit():
        raise ValueError(f"not an 8-decimal number: {text!r}")
    units = int(whole or "0") * SCALE + int(frac.ljust(8, "0"))
    return -units if negative else units


# Real pairs first, with plausible prices, tick sizes and lot steps (all in 1e-8 units).
# (symbol, base, quote, price, tick, step)
_REAL: tuple[tuple[str, str, str, int, int, int], ...] = (
    ("BTCUSDT", "BTC", "USDT", 61_234 * SCALE, 1_000_000, 1_000),
    ("ETHUSDT", "ETH", "USDT", 3_021 * SCALE, 1_000_000, 10_000),
    ("BNBUSDT", "BNB", "USDT", 598 * SCALE, 1_000_000, 100_000),
    ("SOLUSDT", "SOL", "USDT", 152 * SCALE, 1_000_000, 100_000),
    ("XRPUSDT", "XRP", "USDT", 52_000_000, 10_000, 10_000_000),
    ("DOGEUSDT", "DOGE", "USDT", 15_000_000, 1_000, 100_000_000),
    ("ADAUSDT", "ADA", "USDT", 45_000_000, 10_000, 10_000_000),
    ("TRXUSDT", "TRX", "USDT", 12_000_000, 1_000, 10_000_000),
    ("AVAXUSDT", "AVAX", "USDT", 35 * SCALE, 1_000_000, 1_000_000),
    ("LINKUSDT", "LINK", "USDT", 14 * SCALE, 100_000, 1_000_000),
    ("DOTUSDT", "DOT", "USDT", 7 * SCALE, 100_000, 1_000_000),
    ("LTCUSDT", "LTC", "USDT", 84 * SCALE, 1_000_000, 100_000),
    ("BCHUSDT", "BCH", "USDT", 380 * SCALE, 1_000_000, 100_000),
    ("ETHBTC", "ETH", "BTC", 4_930_000, 100, 10_000),
    ("BNBBTC", "BNB", "BTC", 976_000, 10, 100_000),
    ("FILUSDT", "FIL", "USDT", 4 * SCALE, 10_000, 10_000_000),
    ("APTUSDT", "APT", "USDT", 9 * SCALE, 100_000, 1_000_000),
    ("UNIUSDT", "UNI", "USDT", 9 * SCALE, 100_000, 1_000_000),
    ("ATOMUSDT", "ATOM", "USDT", 8 * SCALE, 100_000, 1_000_000),
    ("NEARUSDT", "NEAR", "USDT", 6 * SCALE, 100_000, 1_000_000),
)
_CONSONANTS = "BCDFGHJKLMNPRSTVWXZ"
_VOWELS = "AEIOU"


@dataclass(frozen=True)
class SymbolSpec:
    symbol: str
    base: str
    quote: str
    price: int  # initial mid, 1e-8 units
    tick: int  # tickSize, 1e-8 units
    step: int  # stepSize, 1e-8 units


def synthetic_spec(index: int, rng: random.Random) -> SymbolSpec:
    """A plausible made-up USDT pair: three-letter base, price 0.001..1000, ~1e-4 relative tick."""
    c, v = len(_CONSONANTS), len(_VOWELS)
    n = index
    base = _CONSONANTS[n % c] + _VOWELS[(n // c) % v] + _CONSONANTS[(n // (c * v)) % c]
    if n >= c * v * c:
        base += str(n // (c * v * c))
    price_float = 10 ** rng.uniform(-3, 3)
    magnitude = math.floor(math.log10(price_float))
    tick = 10 ** max(0, magnitude + 8 - 5)  # a relative tick of 1e-5..1e-6
    price = int(price_float * SCALE) // tick * tick
    lot_units = _notional("USDT") * SCALE // price
    step = 10 ** min(8, max(0, len(str(lot_units)) - 3))  # a lot is ~100..1000 steps
    return SymbolSpec(base + "USDT", base, "USDT", price, tick, step)


def _notional(quote: str) -> int:
    """Typical order size in quote units (1e-8): ~20 USDT, or its worth in BTC."""
    return 30_000 if quote == "BTC" else 20 * SCALE


def make_specs(count: int, seed: int) -> list[SymbolSpec]:
    rng = random.Random(seed)
    specs = [SymbolSpec(*row) for row in _REAL[:count]]
    taken = {s.symbol for s in specs}
    index = 0
    while len(specs) < count:
        spec = synthetic_spec(index, rng)
        index += 1
        if spec.symbol not in taken:
            taken.add(spec.symbol)
            specs.append(spec)
    return specs


@dataclass(frozen=True)
class Tables:
    """Shared lookup tables that turn one random word into a realistic change."""

    levels: int  # target levels per side
    span: int  # ticks from the top within which a side's levels live
    distance: tuple[int, ...]  # ticks from the top, 1024 entries
    lots: tuple[int, ...]  # quantity multipliers, 1024 entries
    changes: tuple[int, ...]  # level changes per step, 256 entries

    @classmethod
    def build(cls, levels: int) -> Tables:
        rng = random.Random(levels)
        span = max(4, levels * 3 // 2)  # equilibrium density is ~2/3 (see _change)
        near = [min(span - 1, int(rng.expovariate(1 / 12))) for _ in range(640)]
        far = [rng.randrange(span) for _ in range(384)]
        distance = near + far
        rng.shuffle(distance)
        lots = [max(1, int(10 ** rng.uniform(0, 3))) for _ in range(1024)]
        changes = [min(60, 1 + int(rng.expovariate(1 / 7))) for _ in range(256)]
        return cls(levels, span, tuple(distance), tuple(lots), tuple(changes))


@dataclass
class Trade:
    id: int
    price: int
    qty: int
    time: int
    buyer_maker: bool


class TradeLog:
    """The last ``capacity`` trades of a symbol in flat arrays (~25 bytes a trade: thousands of
    symbols trading for hours must not grow the process); ids are consecutive, so not stored."""

    def __init__(self, capacity: int = TRADE_HISTORY) -> None:
        self.capacity = capacity
        self.price = array("q")
        self.qty = array("q")
        self.time = array("q")
        self.buyer_maker = bytearray()
        self.count = 0  # trades ever appended
        self.last_id = 0

    def append(self, trade: Trade) -> None:
        if self.count < self.capacity:  # grow until full, then overwrite the oldest
            self.price.append(trade.price)
            self.qty.append(trade.qty)
            self.time.append(trade.time)
            self.buyer_maker.append(trade.buyer_maker)
        else:
            i = self.count % self.capacity
            self.price[i], self.qty[i], self.time[i] = trade.price, trade.qty, trade.time
            self.buyer_maker[i] = trade.buyer_maker
        self.count += 1
        self.last_id = trade.id

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def last(self, n: int) -> list[Trade]:
        """The last ``n`` trades, oldest first."""
        n = min(n, len(self))
        out = []
        for k in range(self.count - n, self.count):
            i = k % self.capacity
            trade_id = self.last_id - (self.count - 1 - k)
            out.append(
                Trade(trade_id, self.price[i], self.qty[i], self.time[i], bool(self.buyer_maker[i]))
            )
        return out

    def __iter__(self) -> Iterator[Trade]:
        return iter(self.last(len(self)))


@dataclass
class Diff:
    """Changes ``first_id..last_id``: ``levels`` maps ``tick << 1 | side`` to the final
    quantity in steps (0: removed), each changed price once."""

    first_id: int
    last_id: int
    levels: dict[int, int]


@dataclass
class Step:
    diff: Diff | None
    trades: list[Trade]
    top_changed: bool


@dataclass(frozen=True)
class FrozenBook:
    update_id: int
    qty: array[int]  # quantities from ``first`` (the deepest bid) to the deepest ask
    first: int
    best_bid: int
    best_ask: int
    tick: int
    step: int

    def levels(self, side: int, limit: int | None = None) -> list[list[str]]:
        q = self.qty
        if side == BID:
            idx: range = range(self.best_bid - self.first, -1, -1)
        else:
            idx = range(self.best_ask - self.first, len(q))
        out: list[list[str]] = []
        for i in idx:
            v = q[i]
            if v:
                out.append([fmt((i + self.first) * self.tick), fmt(v * self.step)])
                if limit is not None and len(out) >= limit:
                    break
        return out

    def depth(self, limit: int | None = None) -> dict[str, Any]:
        return {
            "lastUpdateId": self.update_id,
            "bids": self.levels(BID, limit),
            "asks": self.levels(ASK, limit),
        }


@dataclass
class Stats:
    """24 h statistics in integers: prices in 1e-8, volumes in 1e-8, quote volume in 1e-16."""

    open_time: int
    open: int
    prev_close: int
    high: int
    low: int
    last: int
    last_qty: int
    volume: int
    quote_volume: int
    first_id: int
    last_id: int


class SymbolMarket:
    """One symbol: its book, update-id counter, trades and statistics."""

    def __init__(self, spec: SymbolSpec, seed: int, tables: Tables, now_ms: int) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self.status = "TRADING"
        self.tables = tables
        self._rng = random.Random(f"{seed}:{spec.symbol}")
        bits = self._rng.getrandbits
        self._bits = bits
        self.update_id = 1_000_000 + bits(24)
        span = tables.span
        self._window = 3 * span + 64
        mid = spec.price // spec.tick
        self.base = max(1, mid - self._window // 2)
        self.qty = array("i", bytes(4 * self._window))
        self.best_bid = mid - 1
        self.best_ask = mid + 1
        self.deep_bid = self.best_bid
        self.deep_ask = self.best_ask
        self.bid_levels = 0
        self.ask_levels = 0
        self.lot = max(1, min(100_000, _notional(spec.quote) * SCALE // spec.price // spec.step))
        self._seed_book(span)
        self.trades = TradeLog()
        first_id = 100_000 + bits(20)
        count = 50_000 + bits(16)
        price = spec.price

        def on_grid(units: int) -> int:
            return units // spec.tick * spec.tick

        self.stats = Stats(
            open_time=now_ms - DAY_MS,
            open=on_grid(price - price // 50 + (bits(8) * price // 6400)),
            prev_close=on_grid(price - price // 51),
            high=on_grid(price + price // 40),
            low=on_grid(price - price // 30),
            last=self.best_ask * spec.tick,
            last_qty=self.lot * spec.step,
            volume=count * self.lot * spec.step,
            quote_volume=count * self.lot * spec.step * price,
            first_id=first_id,
            last_id=first_id + count - 1,
        )
        self.next_trade_id = self.stats.last_id + 1
        self.changed_since_ticker = False

    # -- book primitives ------------------------------------------------------------------------

    def _seed_book(self, span: int) -> None:
        bits = self._bits
        lots = self.tables.lots
        q = self.qty
        base = self.base
        for side_best, sign in ((self.best_bid, -1), (self.best_ask, 1)):
            placed = 0
            for d in range(span):
                if placed >= self.tables.levels:
                    break
                i = side_best + sign * d - base
                if 0 <= i < self._window and (d == 0 or bits(2) != 0):  # ~3/4 dense
                    q[i] = lots[bits(10)] * self.lot
                    placed += 1
            if sign < 0:
                self.bid_levels = placed
            else:
                self.ask_levels = placed
        self.deep_bid = self._scan(max(self.best_bid - span, base), 1, self.best_bid)
        self.deep_ask = self._scan(
            min(self.best_ask + span, base + self._window - 1), -1, self.best_ask
        )

    def _scan(self, start: int, step: int, stop: int) -> int:
        """First tick from ``start`` towards ``stop`` holding a level, else ``stop``."""
        q = self.qty
        base = self.base
        t = start
        while t != stop and not q[t - base]:
            t += step
        return t

    def _set(self, side: int, t: int, new: int, changes: dict[int, int] | None) -> None:
        """Set the level at tick ``t`` on ``side`` to ``new`` lots-steps (0 removes), keeping
        best, deepest and counts right. Callers keep bids below the best ask and vice versa."""
        i = t - self.base
        old = self.qty[i]
        self.qty[i] = new
        if changes is not None:
            changes[t * 2 + side] = new
        if side == BID:
            if old and not new:
                self.bid_levels -= 1
                if t == self.best_bid:
                    self.best_bid = self._scan(t - 1, -1, self.deep_bid)
                if t == self.deep_bid:
                    self.deep_bid = self._scan(t + 1, 1, self.best_bid)
            elif new and not old:
                self.bid_levels += 1
                if t > self.best_bid:
                    self.best_bid = t
                if t < self.deep_bid:
                    self.deep_bid = t
        else:
            if old and not new:
                self.ask_levels -= 1
                if t == self.best_ask:
                    self.best_ask = self._scan(t + 1, 1, self.deep_ask)
                if t == self.deep_ask:
                    self.deep_ask = self._scan(t - 1, -1, self.best_ask)
            elif new and not old:
                self.ask_levels += 1
                if t < self.best_ask:
                    self.best_ask = t
                if t > self.deep_ask:
                    self.deep_ask = t

    def _recentre(self, changes: dict[int, int] | None) -> int:
        """Move the window so the spread sits in its middle; returns level changes made."""
        mid = (self.best_bid + self.best_ask) // 2
        new_base = max(1, mid - self._window // 2)
        if new_base == self.base:
            return 0
        lo, hi = new_base, new_base + self._window - 1
        removed = 0
        while self.deep_bid < lo:
            self._set(BID, self.deep_bid, 0, changes)
            removed += 1
        while self.deep_ask > hi:
            self._set(ASK, self.deep_ask, 0, changes)
            removed += 1
        shift = new_base - self.base
        old = self.qty
        fresh = array("i", bytes(4 * self._window))
        if shift >= 0:
            fresh[: self._window - shift] = old[shift:]
        else:
            fresh[-shift:] = old[: self._window + shift]
        self.qty = fresh
        self.base = new_base
        return removed

    # -- one step of market activity --------------------------------------------------------------

    def step(self, now_ms: int, want_diff: bool = True) -> Step:
        """Advance one diff interval: cancels, adds, maybe a trade. Returns the merged diff
        (each changed price once, final quantity) or None when nothing changed."""
        bits = self._bits
        tables = self.tables
        changes: dict[int, int] | None = {} if want_diff else None
        top = (self.best_bid, self.best_ask, self.qty[self.best_bid - self.base])
        top_ask_qty = self.qty[self.best_ask - self.base]
        count = tables.changes[bits(8)]
        self._changes(count, changes)
        trades: list[Trade] = []
        if bits(2) == 0:
            count += self._trade(bits(32), now_ms, trades, changes)
        count += self._trim(changes)
        margin = self._window // 8
        if self.best_bid - self.base < margin or self.base + self._window - self.best_ask < margin:
            count += self._recentre(changes)
        top_changed = (
            top
            != (
                self.best_bid,
                self.best_ask,
                self.qty[self.best_bid - self.base],
            )
            or top_ask_qty != self.qty[self.best_ask - self.base]
        )
        if count == 0:
            return Step(None, trades, top_changed)
        first = self.update_id + 1
        self.update_id += count
        diff = None
        if changes is not None:
            diff = self._diff(first, self.update_id, changes)
        return Step(diff, trades, top_changed)

    def _changes(self, count: int, changes: dict[int, int] | None) -> None:
        """``count`` random cancels, adds and amendments. The hot loop of the simulator: table
        lookups on one random word per change, locals instead of attributes, and the common
        case (a new quantity on an existing level) without any bookkeeping."""
        bits = self._bits
        distances = self.tables.distance
        lots = self.tables.lots
        lot = self.lot
        q = self.qty
        base = self.base
        window = self._window
        for _ in range(count):
            word = bits(32)
            side = word & 1
            action = (word >> 11) & 15
            new = lots[(word >> 15) & 1023] * lot
            if action == 0 and self.best_ask - self.best_bid > 1:
                # Improve the best price by one tick: this is what makes the mid drift.
                self._set(side, self.best_ask - 1 if side else self.best_bid + 1, new, changes)
                continue
            distance = distances[(word >> 1) & 1023]
            t = self.best_ask + distance if side else self.best_bid - distance
            i = t - base
            if not 0 <= i < window:
                continue
            old = q[i]
            if old and action >= 7:
                q[i] = new
                if changes is not None:
                    changes[t * 2 + side] = new
            elif not old:
                self._set(side, t, new, changes)
            elif (self.ask_levels if side else self.bid_levels) > 1:
                self._set(side, t, 0, changes)

    def _trim(self, changes: dict[int, int] | None) -> int:
        """Cancel the deepest levels of a side grown past its target (keeps memory bounded)."""
        limit = self.tables.levels
        made = 0
        while self.bid_levels > limit:
            self._set(BID, self.deep_bid, 0, changes)
            made += 1
        while self.ask_levels > limit:
            self._set(ASK, self.deep_ask, 0, changes)
            made += 1
        return made

    def _trade(
        self, word: int, now_ms: int, out: list[Trade], changes: dict[int, int] | None
    ) -> int:
        """A taker order that sweeps the top of one side; returns level changes made."""
        taker_buys = bool(word & 1)
        remaining = self.tables.lots[(word >> 1) & 1023] * self.lot * (1 + ((word >> 11) & 3))
        made = 0
        q = self.qty
        while remaining > 0:
            side = ASK if taker_buys else BID
            t = self.best_ask if taker_buys else self.best_bid
            if (self.ask_levels if taker_buys else self.bid_levels) <= 1:
                break
            available = q[t - self.base]
            filled = min(available, remaining)
            remaining -= filled
            self._set(side, t, available - filled, changes)
            made += 1
            self._record(t * self.spec.tick, filled * self.spec.step, now_ms, not taker_buys, out)
        return made

    def _record(
        self, price: int, qty: int, now_ms: int, buyer_maker: bool, out: list[Trade]
    ) -> None:
        trade = Trade(self.next_trade_id, price, qty, now_ms, buyer_maker)
        self.next_trade_id += 1
        self.trades.append(trade)
        out.append(trade)
        s = self.stats
        s.last = price
        s.last_qty = qty
        s.high = max(s.high, price)
        s.low = min(s.low, price)
        s.volume += qty
        s.quote_volume += price * qty
        s.last_id = trade.id
        self.changed_since_ticker = True

    def _diff(self, first: int, last: int, changes: dict[int, int]) -> Diff:
        if self.bid_levels > DIFF_DEPTH_LIMIT or self.ask_levels > DIFF_DEPTH_LIMIT:
            changes = {
                key: new
                for key, new in changes.items()
                if self._rank(key & 1, key >> 1) <= DIFF_DEPTH_LIMIT
            }
        return Diff(first, last, changes)

    def diff_sides(self, diff: Diff) -> tuple[list[list[str]], list[list[str]]]:
        """(bids, asks) of a diff as ``[price, qty]`` strings."""
        sides: tuple[list[list[str]], list[list[str]]] = ([], [])
        for key, new in diff.levels.items():
            sides[key & 1].append([fmt((key >> 1) * self.spec.tick), fmt(new * self.spec.step)])
        return sides

    def encode_diff(self, diff: Diff, now_ms: int) -> bytes:
        """The depthUpdate event as JSON bytes, formatted straight from integers (the hot path:
        ~3x cheaper than building string lists for orjson)."""
        tick = self.spec.tick
        step = self.spec.step
        sides: tuple[list[str], list[str]] = ([], [])
        for key, new in diff.levels.items():
            p = (key >> 1) * tick
            q = new * step
            sides[key & 1].append(_LEVEL % (p // SCALE, p % SCALE, q // SCALE, q % SCALE))
        return (
            _DIFF
            % (
                now_ms,
                self.symbol,
                diff.first_id,
                diff.last_id,
                ",".join(sides[0]),
                ",".join(sides[1]),
            )
        ).encode()

    def _rank(self, side: int, t: int) -> int:
        """1-based position of tick ``t`` from the top of ``side`` (counting existing levels)."""
        base = self.base
        if side == BID:
            lo, hi = t - base, self.best_bid - base + 1
        else:
            lo, hi = self.best_ask - base, t - base + 1
        if lo >= hi:
            return 1
        segment = self.qty[lo:hi]
        return len(segment) - segment.count(0) + (0 if self.qty[t - base] else 1)

    # -- views -------------------------------------------------------------------------------

    def levels(self, side: int, limit: int | None = None) -> list[list[str]]:
        """Best-first ``[price, qty]`` strings, at most ``limit`` levels."""
        return self.freeze().levels(side, limit)

    def freeze(self) -> FrozenBook:
        """A copy of the book as it is now (cheap: one array copy), e.g. to serve stale later."""
        return FrozenBook(
            self.update_id,
            self.qty[self.deep_bid - self.base : self.deep_ask - self.base + 1],
            self.deep_bid,
            self.best_bid,
            self.best_ask,
            self.spec.tick,
            self.spec.step,
        )

    def depth(self, limit: int | None = None) -> dict[str, Any]:
        return self.freeze().depth(limit)

    def best(self) -> tuple[int, int, int, int]:
        """(bid price, bid qty, ask price, ask qty) in 1e-8 units."""
        tick, step, q, base = self.spec.tick, self.spec.step, self.qty, self.base
        return (
            self.best_bid * tick,
            q[self.best_bid - base] * step,
            self.best_ask * tick,
            q[self.best_ask - base] * step,
        )

    def book_ticker(self) -> dict[str, Any]:
        bp, bq, ap, aq = self.best()
        return {
            "u": self.update_id,
            "s": self.symbol,
            "b": fmt(bp),
            "B": fmt(bq),
            "a": fmt(ap),
            "A": fmt(aq),
        }

    def ticker(self, now_ms: int) -> dict[str, Any]:
        """The full 24hrTicker event body (REST FULL uses the same numbers, other key names)."""
        s = self.stats
        bp, bq, ap, aq = self.best()
        change = s.last - s.open
        percent = f"{change * 100 / s.open:.3f}" if s.open else "0.000"
        weighted = s.quote_volume // s.volume if s.volume else 0
        return {
            "e": "24hrTicker",
            "E": now_ms,
            "s": self.symbol,
            "p": fmt(change),
            "P": percent,
            "w": fmt(weighted),
            "x": fmt(s.prev_close),
            "c": fmt(s.last),
            "Q": fmt(s.last_qty),
            "b": fmt(bp),
            "B": fmt(bq),
            "a": fmt(ap),
            "A": fmt(aq),
            "o": fmt(s.open),
            "h": fmt(s.high),
            "l": fmt(s.low),
            "v": fmt(s.volume),
            "q": fmt(s.quote_volume // SCALE),
            "O": s.open_time,
            "C": now_ms,
            "F": s.first_id,
            "L": s.last_id,
            "n": s.last_id - s.first_id + 1,
        }

    def mini_ticker(self, now_ms: int) -> dict[str, Any]:
        s = self.stats
        return {
            "e": "24hrMiniTicker",
            "E": now_ms,
            "s": self.symbol,
            "c": fmt(s.last),
            "o": fmt(s.open),
            "h": fmt(s.high),
            "l": fmt(s.low),
            "v": fmt(s.volume),
            "q": fmt(s.quote_volume // SCALE),
        }


def trade_event(symbol: str, trade: Trade, now_ms: int) -> dict[str, Any]:
    return {
        "e": "trade",
        "E": now_ms,
        "s": symbol,
        "t": trade.id,
        "p": fmt(trade.price),
        "q": fmt(trade.qty),
        "T": trade.time,
        "m": trade.buyer_maker,
        "M": True,
    }


def agg_trade_event(symbol: str, trade: Trade, now_ms: int) -> dict[str, Any]:
    # One maker level per trade, so each aggregate holds exactly one trade.
    return {
        "e": "aggTrade",
        "E": now_ms,
        "s": symbol,
        "a": trade.id,
        "p": fmt(trade.price),
        "q": fmt(trade.qty),
        "f": trade.id,
        "l": trade.id,
        "T": trade.time,
        "m": trade.buyer_maker,
        "M": True,
    }


def rest_trade(trade: Trade) -> dict[str, Any]:
    return {
        "id": trade.id,
        "price": fmt(trade.price),
        "qty": fmt(trade.qty),
        "quoteQty": fmt(trade.price * trade.qty // SCALE),
        "time": trade.time,
        "isBuyerMaker": trade.buyer_maker,
        "isBestMatch": True,
    }


@dataclass
class Market:
    """All symbols of the simulated exchange, in listing order."""

    seed: int = 1
    levels: int = 2000
    symbols: dict[str, SymbolMarket] = field(default_factory=dict)

    @classmethod
    def create(cls, count: int, seed: int, levels: int = 2000, now_ms: int = 0) -> Market:
        market = cls(seed=seed, levels=levels)
        for spec in make_specs(count, seed):
            market.add(spec, now_ms)
        return market

    @property
    def tables(self) -> Tables:
        return _tables(self.levels)

    def add(self, spec: SymbolSpec, now_ms: int) -> SymbolMarket:
        existing = self.symbols.get(spec.symbol)
        if existing is not None:
            existing.status = "TRADING"
            return existing
        sym = SymbolMarket(spec, self.seed, self.tables, now_ms)
        self.symbols[spec.symbol] = sym
        return sym

    def trading(self) -> list[SymbolMarket]:
        return [s for s in self.symbols.values() if s.status == "TRADING"]


_TABLES: dict[int, Tables] = {}


def _tables(levels: int) -> Tables:
    if levels not in _TABLES:
        _TABLES[levels] = Tables.build(levels)
    return _TABLES[levels]

"""A symbol's trade history as Binance serves it: recent trades, candles (klines), rolling-window
statistics and the 5-minute average price, with no I/O.

The simulator's history starts when a symbol is listed. Three sources, each exact over what it
keeps: the last ``TRADE_HISTORY`` trades (``trades``, ``aggTrades``, ``historicalTrades``, 1s
klines, ``avgPrice``), one-minute buckets of the last day (minute-based klines, rolling windows
up to a day) and one-hour buckets of the last ``HOUR_BUCKETS`` hours (hour-and-longer klines,
longer rolling windows; they take each minute once it is over, so a span of hours adds the
newest minute). A kline or window is built from one source and only where that source is
complete, so every figure is the exact sum of the trades it covers.

Prices and quantities are integers in 1e-8 units (see ``market``); a bucket's quote volume is the
sum of its trades' ``quoteQty`` (``price * qty // 1e8``), so klines add up to the trades' rows.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from marketpipe.simulator.units import SCALE, fmt

TRADE_HISTORY = 1000  # trades kept per symbol (REST /trades serves at most 1000)
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
MONTH = -1  # the width of the calendar-month interval, which has none
MINUTE_BUCKETS = 24 * 60 + 1  # a day of minutes, and the current one
HOUR_BUCKETS = 1000
AVG_PRICE_MINUTES = 5

# Kline intervals (case-sensitive) and their widths in ms.
KLINE_INTERVALS: dict[str, int] = {
    "1s": SECOND,
    "1m": MINUTE,
    "3m": 3 * MINUTE,
    "5m": 5 * MINUTE,
    "15m": 15 * MINUTE,
    "30m": 30 * MINUTE,
    "1h": HOUR,
    "2h": 2 * HOUR,
    "4h": 4 * HOUR,
    "6h": 6 * HOUR,
    "8h": 8 * HOUR,
    "12h": 12 * HOUR,
    "1d": DAY,
    "3d": 3 * DAY,
    "1w": WEEK,
    "1M": MONTH,
}
_MONDAY = 4 * DAY  # 1970-01-01 was a Thursday; weekly klines open on Mondays
_TIME_ZONE = re.compile(r"^([+-]?)(\d{1,2})(?::(\d{2}))?$")
_WINDOW = re.compile(r"^([1-9]\d?)([mhd])$")
_WINDOW_UNITS = {"m": (MINUTE, 59), "h": (HOUR, 23), "d": (DAY, 7)}


@dataclass(slots=True)
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

    @property
    def wrapped(self) -> bool:
        """True once older trades have been overwritten."""
        return self.count > self.capacity

    @property
    def first_id(self) -> int:
        """Id of the oldest trade kept (``last_id + 1`` when there is none)."""
        return self.last_id - len(self) + 1

    def _trade(self, k: int) -> Trade:
        i = k % self.capacity
        trade_id = self.last_id - (self.count - 1 - k)
        return Trade(trade_id, self.price[i], self.qty[i], self.time[i], bool(self.buyer_maker[i]))

    def last(self, n: int) -> list[Trade]:
        """The last ``n`` trades, oldest first."""
        n = min(n, len(self))
        return [self._trade(k) for k in range(self.count - n, self.count)]

    def _start(self, time: int) -> int:
        """Position (in appends) of the first kept trade at or after ``time``: a scan back from
        the newest, so recent times are cheap."""
        k, oldest = self.count, self.count - len(self)
        while k > oldest and self.time[(k - 1) % self.capacity] >= time:
            k -= 1
        return k

    def since(self, time: int) -> list[Trade]:
        """The kept trades at or after ``time`` (ms), oldest first."""
        return [self._trade(k) for k in range(self._start(time), self.count)]

    def price_before(self, time: int) -> int | None:
        """Price of the last kept trade before ``time``, if one is kept."""
        k = self._start(time)
        return self.price[(k - 1) % self.capacity] if k > self.count - len(self) else None

    def __iter__(self) -> Iterator[Trade]:
        return iter(self.last(len(self)))


@dataclass(slots=True)
class Bar:
    """The trades between ``open_time`` and ``close_time`` (ms, both inclusive) as one candle.
    Without trades (``count == 0``, ids -1) every price is the close before it."""

    open_time: int
    close_time: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0
    quote_volume: int = 0  # the sum of the trades' quoteQty (price * qty // 1e8)
    taker_volume: int = 0  # the part a taker bought (the buyer was not the maker)
    taker_quote: int = 0
    count: int = 0
    first_id: int = -1

    @property
    def last_id(self) -> int:
        return self.first_id + self.count - 1 if self.count else -1

    def add(self, trade: Trade) -> None:
        price = trade.price
        if self.count:
            self.high, self.low = max(self.high, price), min(self.low, price)
        else:
            self.open = self.high = self.low = price
            self.first_id = trade.id
        self.close = price
        quote = price * trade.qty // SCALE
        self.volume += trade.qty
        self.quote_volume += quote
        if not trade.buyer_maker:
            self.taker_volume += trade.qty
            self.taker_quote += quote
        self.count += 1

    def merge(self, later: Bar) -> None:
        """Fold in the trades of a bar that follows this one (the times stay this bar's)."""
        if not later.count:
            return
        if self.count:
            self.high, self.low = max(self.high, later.high), min(self.low, later.low)
        else:
            self.open, self.high, self.low = later.open, later.high, later.low
            self.first_id = later.first_id
        self.close = later.close
        self.volume += later.volume
        self.quote_volume += later.quote_volume
        self.taker_volume += later.taker_volume
        self.taker_quote += later.taker_quote
        self.count += later.count


class Candles:
    """Buckets of ``width`` ms (bucket ``b`` covers ``[b*width, (b+1)*width)``), the last
    ``capacity`` of them, in flat arrays that grow to ``capacity`` and then wrap (~80 bytes a
    bucket). A bucket without trades holds the close before it as every price. Each bucket
    that is complete (a later one has opened) is also added to ``rollup``, a coarser ring that
    so lacks only the newest bucket: one update a trade instead of one per ring."""

    __slots__ = (
        "capacity",
        "close",
        "count",
        "first",
        "first_id",
        "high",
        "last",
        "low",
        "open",
        "quote",
        "rollup",
        "taker_quote",
        "taker_volume",
        "volume",
        "width",
    )

    def __init__(
        self, width: int, capacity: int, listed: int, price: int, rollup: Candles | None = None
    ) -> None:
        self.width, self.capacity, self.rollup = width, capacity, rollup
        self.first = self.last = listed // width  # the listing's bucket; the newest bucket
        self.open, self.high, self.low, self.close = (array("q", [price]) for _ in range(4))
        self.volume, self.quote, self.taker_volume, self.taker_quote, self.count = (
            array("q", [0]) for _ in range(5)
        )
        self.first_id = array("q", [-1])

    @property
    def oldest(self) -> int:
        """The oldest bucket kept."""
        return max(self.first, self.last - self.capacity + 1)

    @property
    def complete_from(self) -> int | None:
        """Time (ms) from which every trade is counted; None: every trade since listing."""
        return None if self.oldest == self.first else self.oldest * self.width

    def _slot(self, bucket: int) -> int:
        return (bucket - self.first) % self.capacity

    def _advance(self, bucket: int) -> None:
        """Open the buckets after the newest up to ``bucket``, each empty at the last close."""
        newest = self._slot(self.last)
        if self.rollup is not None and self.count[newest]:
            self.rollup.add_bar(self.newest())
        carried = self.close[newest]
        prices = (self.open, self.high, self.low, self.close)
        sums = (self.volume, self.quote, self.taker_volume, self.taker_quote, self.count)
        size = len(self.count)
        grown = min(self.capacity, bucket - self.first + 1)
        for column in prices:
            column.extend([carried] * (grown - size))
        for column in sums:
            column.extend([0] * (grown - size))
        self.first_id.extend([-1] * (grown - size))
        # Buckets past the appended ones reuse the slots of the oldest (at most a ring's worth).
        lowest = max(self.last + 1, self.first + grown, bucket - self.capacity + 1)
        for k in range(lowest, bucket + 1):
            i = self._slot(k)
            for column in prices:
                column[i] = carried
            for column in sums:
                column[i] = 0
            self.first_id[i] = -1
        self.last = bucket

    def add(
        self,
        time: int,
        prices: tuple[int, int, int, int],
        volumes: tuple[int, int, int, int],
        count: int,
        first_id: int,
    ) -> None:
        """``count`` trades (ids from ``first_id``) at ``time`` with (first, high, low, last)
        ``prices`` and (volume, quote volume, taker-bought volume and quote) ``volumes``; a
        clock that stepped back lands them in the newest bucket."""
        if time // self.width > self.last:
            self._advance(time // self.width)
        i = (self.last - self.first) % self.capacity
        first, high, low, last = prices
        volume, quote, taker_volume, taker_quote = volumes
        if self.count[i]:
            if high > self.high[i]:
                self.high[i] = high
            if low < self.low[i]:
                self.low[i] = low
        else:
            self.open[i], self.high[i], self.low[i], self.first_id[i] = first, high, low, first_id
        self.close[i] = last
        self.volume[i] += volume
        self.quote[i] += quote
        if taker_volume:
            self.taker_volume[i] += taker_volume
            self.taker_quote[i] += taker_quote
        self.count[i] += count

    def add_bar(self, bar: Bar) -> None:
        self.add(
            bar.open_time,
            (bar.open, bar.high, bar.low, bar.close),
            (bar.volume, bar.quote_volume, bar.taker_volume, bar.taker_quote),
            bar.count,
            bar.first_id,
        )

    def newest(self) -> Bar:
        """The newest bucket (the one not yet in ``rollup``)."""
        return self._bar(self.last)

    def _bar(self, bucket: int) -> Bar:
        start = bucket * self.width
        end = start + self.width - 1
        if bucket > self.last:  # no trade since the newest bucket
            price = self.close[self._slot(self.last)]
            return Bar(start, end, price, price, price, price)
        i = self._slot(bucket)
        return Bar(
            start,
            end,
            self.open[i],
            self.high[i],
            self.low[i],
            self.close[i],
            self.volume[i],
            self.quote[i],
            self.taker_volume[i],
            self.taker_quote[i],
            self.count[i],
            self.first_id[i],
        )

    def span(self, start: int, end: int) -> Bar:
        """The buckets holding ``start``..``end`` (ms; bucket boundaries, from
        ``complete_from`` on) as one bar."""
        first = max(start // self.width, self.oldest)
        out = self._bar(first)
        for bucket in range(first + 1, end // self.width + 1):
            out.merge(self._bar(bucket))
        out.open_time, out.close_time = start, end
        return out


def parse_time_zone(text: str) -> int:
    """Binance's ``timeZone`` (``0``, ``8``, ``-1:00``, ``+05:45``; -12:00..+14:00) -> offset
    east of UTC in ms; raises ValueError."""
    match = _TIME_ZONE.match(text)
    if not match:
        raise ValueError(f"not a time zone: {text!r}")
    sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3) or 0)
    offset = (hours * HOUR + minutes * MINUTE) * (-1 if sign == "-" else 1)
    if minutes >= 60 or not -12 * HOUR <= offset <= 14 * HOUR:
        raise ValueError(f"time zone out of range: {text!r}")
    return offset


def parse_window(text: str) -> int:
    """A rolling-window size (``1m``..``59m``, ``1h``..``23h``, ``1d``..``7d``) -> ms; raises
    ValueError."""
    match = _WINDOW.match(text)
    if not match:
        raise ValueError(f"not a window size: {text!r}")
    unit, most = _WINDOW_UNITS[match.group(2)]
    if int(match.group(1)) > most:
        raise ValueError(f"window size out of range: {text!r}")
    return int(match.group(1)) * unit


def kline_open(time: int, width: int, offset: int = 0) -> int:
    """Open time (UTC ms) of the kline of ``width`` (or ``MONTH``) that holds ``time``, its
    boundaries midnight-aligned in the zone ``offset`` ms east of UTC."""
    local = time + offset
    if width == MONTH:
        day = datetime.fromtimestamp(local // 1000, UTC)
        return int(datetime(day.year, day.month, 1, tzinfo=UTC).timestamp()) * 1000 - offset
    if width == WEEK:
        return (local - _MONDAY) // WEEK * WEEK + _MONDAY - offset
    return local // width * width - offset


def kline_next(open_time: int, width: int, offset: int = 0) -> int:
    """Open time of the kline after the one that opens at ``open_time``."""
    if width == MONTH:
        return kline_open(open_time + 32 * DAY, width, offset)
    return open_time + width


class TradeHistory:
    """One symbol's trades since listing, kept three ways (see the module docstring)."""

    def __init__(self, listed: int, price: int) -> None:
        self.listed = listed
        self.initial_price = price  # the last price before any trade
        self.trades = TradeLog()
        self.hours = Candles(HOUR, HOUR_BUCKETS, listed, price)
        self.minutes = Candles(MINUTE, MINUTE_BUCKETS, listed, price, rollup=self.hours)

    def record(self, sweep: list[Trade]) -> None:
        """The fills of one taker order: same time, same side, each further from the spread
        (so the first and the last fill are the extreme prices)."""
        log = self.trades
        volume = quote = 0
        for trade in sweep:
            log.append(trade)
            volume += trade.qty
            quote += trade.price * trade.qty // SCALE
        head, tail = sweep[0], sweep[-1]
        prices = (head.price, max(head.price, tail.price), min(head.price, tail.price), tail.price)
        taken = (volume, quote) if not head.buyer_maker else (0, 0)
        self.minutes.add(head.time, prices, (volume, quote, *taken), len(sweep), head.id)

    def select(
        self,
        limit: int,
        from_id: int | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> list[Trade]:
        """Up to ``limit`` kept trades, oldest first: from ``from_id`` and/or ``start`` (the
        first matches), else the most recent (at or before ``end`` if given)."""
        kept = [
            t
            for t in self.trades
            if (from_id is None or t.id >= from_id)
            and (start is None or t.time >= start)
            and (end is None or t.time <= end)
        ]
        if from_id is None and start is None:
            return kept[-limit:]
        return kept[:limit]

    def avg_price(self, now: int) -> tuple[int, int]:
        """(volume-weighted average price of the last 5 minutes' trades, or the last price when
        there were none; the time of the last trade, or listing when there was none)."""
        recent = self.trades.since(now - AVG_PRICE_MINUTES * MINUTE)
        volume = sum(t.qty for t in recent)
        if volume:
            return sum(t.price * t.qty for t in recent) // volume, recent[-1].time
        last = self.trades.last(1)
        return (last[0].price, last[0].time) if last else (self.initial_price, self.listed)

    # -- klines and windows ---------------------------------------------------------------------

    def _trades_complete_from(self) -> int | None:
        log = self.trades
        if not log.wrapped:
            return None
        # The oldest kept trade may have lost fills of the same moment: count from after it.
        return log.time[log.count % log.capacity] + 1

    def _trade_bars(self, bounds: list[tuple[int, int]]) -> list[Bar]:
        """Bars straight from the kept trades (intervals finer than a minute)."""
        start = bounds[0][0]
        trades = self.trades.since(start)
        price = self.trades.price_before(start)
        if price is None:
            price = self.initial_price
        out, j = [], 0
        for open_time, close_time in bounds:
            bar = Bar(open_time, close_time, price, price, price, price)
            while j < len(trades) and trades[j].time <= close_time:
                bar.add(trades[j])
                j += 1
            price = bar.close
            out.append(bar)
        return out

    def klines(
        self,
        width: int,
        now: int,
        limit: int,
        start: int | None = None,
        end: int | None = None,
        offset: int = 0,
    ) -> list[Bar]:
        """Up to ``limit`` klines of ``width`` (a ``KLINE_INTERVALS`` value), oldest first:
        those opening at or after ``start`` (the first ones), else the latest (opening at or
        before ``end`` if given), up to the open one at ``now``; none from before the history
        kept is complete, none from before listing."""
        whole = DAY if width in (MONTH, WEEK) else width
        tiling = (c for c in (self.hours, self.minutes) if not whole % c.width + offset % c.width)
        candles = next(tiling, None)  # None: finer than a minute, from the kept trades
        complete = self._trades_complete_from() if candles is None else candles.complete_from
        if complete is None:
            first = kline_open(self.listed, width, offset)
        else:
            first = kline_open(complete - 1, width, offset)
            first = kline_next(first, width, offset)
        last = kline_open(now if end is None else min(now, end), width, offset)
        opens: list[int] = []
        if start is not None:
            at = max(first, kline_open(start - 1, width, offset))
            at = at if at >= start else kline_next(at, width, offset)
            while at <= last and len(opens) < limit:
                opens.append(at)
                at = kline_next(at, width, offset)
        else:
            at = last
            while at >= first and len(opens) < limit:
                opens.append(at)
                at = kline_open(at - 1, width, offset)
            opens.reverse()
        if not opens:
            return []
        bounds = [(t, kline_next(t, width, offset) - 1) for t in opens]
        if candles is None:
            return self._trade_bars(bounds)
        return [self._span(candles, start, end) for start, end in bounds]

    def _span(self, candles: Candles, start: int, end: int) -> Bar:
        """``candles.span``, with the newest minute added to hours (which lack it)."""
        bar = candles.span(start, end)
        pending = self.minutes.newest()
        if candles is self.hours and pending.count:
            if start <= pending.open_time <= end:
                bar.merge(pending)
            elif pending.open_time < start:  # nothing traded since: its close carries on
                bar.open = bar.high = bar.low = bar.close = pending.close
        return bar

    def kline_update(
        self, width: int, now: int, previous_open: int | None, offset: int = 0
    ) -> list[tuple[Bar, bool]]:
        """What a kline stream sends at ``now`` when it last sent the kline opening at
        ``previous_open``: that kline, final, if it has closed since; then the open one."""
        out = []
        if previous_open is not None and previous_open < kline_open(now, width, offset):
            closed = self.klines(width, now, 1, previous_open, previous_open, offset)
            out += [(bar, True) for bar in closed]
        out += [(bar, False) for bar in self.klines(width, now, 1, offset=offset)]
        return out

    def window(self, size: int, now: int) -> Bar:
        """The trades from the start of the minute ``size`` ms before ``now`` until ``now``
        (Binance's rolling window). A window reaching back past the kept minutes starts at an
        hour instead, counted in hours (``open_time`` says where it starts)."""
        start = now // MINUTE * MINUTE - size
        candles = self.minutes
        complete = candles.complete_from
        if complete is not None and complete > start:
            candles = self.hours
            start = -(-start // HOUR) * HOUR
            complete = candles.complete_from
            start = max(start, complete if complete is not None else start)
        return self._span(candles, start, now)


# -- Binance's shapes ----------------------------------------------------------------------------


def kline_row(bar: Bar) -> list[Any]:
    """A REST ``klines``/``uiKlines`` row."""
    return [
        bar.open_time,
        fmt(bar.open),
        fmt(bar.high),
        fmt(bar.low),
        fmt(bar.close),
        fmt(bar.volume),
        bar.close_time,
        fmt(bar.quote_volume),
        bar.count,
        fmt(bar.taker_volume),
        fmt(bar.taker_quote),
        "0",
    ]


def kline_event(symbol: str, interval: str, bar: Bar, closed: bool, now: int) -> dict[str, Any]:
    """The ``@kline_<interval>`` event."""
    return {
        "e": "kline",
        "E": now,
        "s": symbol,
        "k": {
            "t": bar.open_time,
            "T": bar.close_time,
            "s": symbol,
            "i": interval,
            "f": bar.first_id,
            "L": bar.last_id,
            "o": fmt(bar.open),
            "c": fmt(bar.close),
            "h": fmt(bar.high),
            "l": fmt(bar.low),
            "v": fmt(bar.volume),
            "n": bar.count,
            "x": closed,
            "q": fmt(bar.quote_volume),
            "V": fmt(bar.taker_volume),
            "Q": fmt(bar.taker_quote),
            "B": "0",
        },
    }


def avg_price_event(symbol: str, price: int, last_trade: int, now: int) -> dict[str, Any]:
    """The ``@avgPrice`` event."""
    return {
        "e": "avgPrice",
        "E": now,
        "s": symbol,
        "i": f"{AVG_PRICE_MINUTES}m",
        "w": fmt(price),
        "T": last_trade,
    }


def window_ticker(symbol: str, bar: Bar, kind: str) -> dict[str, Any]:
    """A REST rolling-window ``ticker`` object (``kind`` FULL or MINI)."""
    out: dict[str, Any] = {"symbol": symbol}
    if kind == "FULL":
        change = bar.close - bar.open
        out["priceChange"] = fmt(change)
        out["priceChangePercent"] = f"{change * 100 / bar.open:.3f}" if bar.open else "0.000"
        out["weightedAvgPrice"] = fmt(bar.quote_volume * SCALE // bar.volume if bar.volume else 0)
    out.update(
        openPrice=fmt(bar.open),
        highPrice=fmt(bar.high),
        lowPrice=fmt(bar.low),
        lastPrice=fmt(bar.close),
        volume=fmt(bar.volume),
        quoteVolume=fmt(bar.quote_volume),
        openTime=bar.open_time,
        closeTime=bar.close_time,
        firstId=bar.first_id,
        lastId=bar.last_id,
        count=bar.count,
    )
    return out

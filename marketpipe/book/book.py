"""An exact price-level order book: the exchange's strings in, the same bytes out.

Structure (chosen by measurement, ``bench/bench_engine.py``): each side is two parallel Python
lists sorted by a float key with the **best level at the end**, ``keys`` and ``fragments``. The key
is ``float(price)`` for bids and ``-float(price)`` for asks, so both sides ascend towards the best
price and share one code path. A fragment is the level's JSON, pre-encoded once when the level is
set (``b'["61234.01000000","0.51200000"]'``), so publishing a view is a slice and a join, and the
strings are byte-identical to the exchange's. Most changes land near the top, i.e. near the end of
the lists, where inserting and deleting move few pointers.

Keys are exact: ``float()`` is correctly rounded and monotonic, and distinct decimals of at most
15 significant digits never share a float (Binance prices have at most 7 + 8 digits). A longer
price is refused rather than risk two prices merging into one level. Equal prices written
differently (``"1.0"``, ``"1.00"``) are one level.

Window (levels beyond the snapshot cannot rot): a side is *truncated* when its snapshot returned as
many levels as asked for (or the limit is unknown). Then the side's ``floor`` is the worst key of
the snapshot, and the side is exact for every price at or better than the floor: updates beyond it
are ignored, because the book never knew that region. A side also holds at most ``cap`` levels
(the snapshot limit): when inserts push it past ``cap + cap // 4``, the worst levels are dropped
back to ``cap`` and the floor moves in to the worst level kept. The book is therefore the true book
restricted to ``[floor, best]`` on each side, and memory is bounded.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated

import msgspec

INF = float("inf")
MAX_EXACT_DIGITS = 15
# A price of at most 16 characters has at most 15 digits: the common case needs no counting.
_SHORT_PRICE = MAX_EXACT_DIGITS + 1


class BadLevel(ValueError):
    """A level no exchange can send (``kind``: ``price``, ``quantity``, ``precision``)."""

    def __init__(self, kind: str, level: Sequence[str]) -> None:
        super().__init__(f"impossible level ({kind}): {list(level)!r}")
        self.kind = kind


def encode_level(price: str, quantity: str) -> bytes:
    """The JSON of one level exactly as published."""
    return f'["{price}","{quantity}"]'.encode()


def decode_fragment(fragment: bytes) -> tuple[str, str]:
    """Back from a fragment to ``(price, quantity)`` (tests, audits; not the hot path)."""
    split = fragment.index(b'"', 2)
    return fragment[2:split].decode(), fragment[split + 3 : -2].decode()


def price_of(fragment: bytes) -> str:
    return fragment[2 : fragment.index(b'"', 2)].decode()


def _check_precision(price: str, quantity: str) -> None:
    """A price too precise to keep its own float key (callers skip prices of <= 16 chars)."""
    if len(Decimal(price).normalize().as_tuple().digits) > MAX_EXACT_DIGITS:
        raise BadLevel("precision", (price, quantity))


_MAX = sys.float_info.max
_Price = Annotated[float, msgspec.Meta(gt=0.0, le=_MAX)]
_Quantity = Annotated[float, msgspec.Meta(ge=0.0, le=_MAX)]
Numbers = list[tuple[float, float]]


class _Sides(msgspec.Struct, array_like=True, gc=False):
    # A Struct keeps its converted types cached (a bare list[...] type is rebuilt on every call).
    bids: list[tuple[_Price, _Quantity]]
    asks: list[tuple[_Price, _Quantity]]


def checked_numbers(
    bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]
) -> tuple[Numbers, Numbers]:
    """``(price, quantity)`` of each level as floats; raises BadLevel for an impossible one.

    One C-level pass for the whole diff: msgspec's lax str -> float is correctly rounded (Clinger
    fast path, Eisel-Lemire, then a high-precision fallback), so it yields exactly ``float(s)``;
    its grammar is JSON's, a subset of what ``float()`` takes; the constraints check the ranges
    (price positive and finite, quantity finite and >= 0).
    """
    try:
        sides = msgspec.convert((bids, asks), _Sides, strict=False)
    except msgspec.ValidationError:
        # Rare: find the bad level and say what is wrong with it, or accept a spelling that
        # float() takes and JSON does not (" 1", "1.", "+1").
        return [_checked(*level) for level in bids], [_checked(*level) for level in asks]
    return sides.bids, sides.asks


def _checked(price: str, quantity: str) -> tuple[float, float]:
    try:
        key = float(price)
        size = float(quantity)
    except ValueError:
        raise BadLevel("number", (price, quantity)) from None
    if not (0.0 < key < INF and 0.0 <= size < INF):
        raise BadLevel("price" if not 0.0 < key < INF else "quantity", (price, quantity))
    return key, size


class BookSide:
    """One side. ``keys``/``fragments`` ascend towards the best level (read-only for callers)."""

    __slots__ = ("cap", "floor", "fragments", "is_ask", "keys")

    def __init__(self, is_ask: bool) -> None:
        self.is_ask = is_ask
        self.keys: list[float] = []
        self.fragments: list[bytes] = []
        self.floor = -INF
        self.cap = 0

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, levels: Sequence[Sequence[str]], numbers: Numbers, limit: int | None) -> None:
        """Replace the side by a snapshot's levels (``numbers``: from :func:`checked_numbers`)."""
        merged: dict[float, bytes] = {}
        sign = -1.0 if self.is_ask else 1.0
        for (price, quantity), (key, size) in zip(levels, numbers, strict=True):
            if len(price) > _SHORT_PRICE:
                _check_precision(price, quantity)
            if size:
                merged[key * sign] = encode_level(price, quantity)
            else:
                merged.pop(key * sign, None)
        self.keys = sorted(merged)
        self.fragments = [merged[k] for k in self.keys]
        received = len(merged)
        truncated = received > 0 and (limit is None or received >= limit)
        self.floor = self.keys[0] if truncated else -INF
        self.cap = limit if limit is not None else max(received, 1)

    def apply(self, levels: Sequence[Sequence[str]], numbers: Numbers) -> None:
        """Set the levels of a diff (``numbers``: from :func:`checked_numbers`)."""
        # The hot path: the numbers were checked in C; the loop does the fewest operations.
        keys, fragments, floor, is_ask = self.keys, self.fragments, self.floor, self.is_ask
        for (price, quantity), (key, size) in zip(levels, numbers, strict=True):
            if len(price) > _SHORT_PRICE:
                _check_precision(price, quantity)
            if is_ask:
                key = -key
            if key < floor:
                continue
            at = bisect_left(keys, key)
            if at < len(keys) and keys[at] == key:
                if size:
                    fragments[at] = f'["{price}","{quantity}"]'.encode()
                else:
                    del keys[at]
                    del fragments[at]
            elif size:
                keys.insert(at, key)
                fragments.insert(at, f'["{price}","{quantity}"]'.encode())
        if len(keys) > self.cap + (self.cap >> 2):
            self._prune()

    def _prune(self) -> None:
        excess = len(self.keys) - self.cap
        del self.keys[:excess]
        del self.fragments[:excess]
        self.floor = self.keys[0]

    def best_key(self) -> float | None:
        return self.keys[-1] if self.keys else None

    def levels(self, count: int | None = None) -> list[tuple[str, str]]:
        """Best first: ``[(price, quantity), ...]`` (not the hot path)."""
        chosen = self.fragments if count is None else self.fragments[-count:] if count else []
        return [decode_fragment(f) for f in reversed(chosen)]

    def covers(self, price: str) -> bool:
        """Whether the side knows the truth at this price (inside its window)."""
        key = -float(price) if self.is_ask else float(price)
        return key >= self.floor


class OrderBook:
    """Bids and asks of one symbol. ``apply`` raises :class:`BadLevel` part-way through a diff;
    the caller must then discard the book (the sync engine does)."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids = BookSide(is_ask=False)
        self.asks = BookSide(is_ask=True)

    def load(
        self,
        bids: Sequence[Sequence[str]],
        asks: Sequence[Sequence[str]],
        limit: int | None,
    ) -> None:
        """Replace the whole book by a snapshot that was asked for ``limit`` levels a side."""
        bid_numbers, ask_numbers = checked_numbers(bids, asks)
        self.bids.load(bids, bid_numbers, limit)
        self.asks.load(asks, ask_numbers, limit)

    def apply(self, bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]) -> None:
        """Set (not add) each level's quantity; a zero quantity removes the level."""
        bid_numbers, ask_numbers = checked_numbers(bids, asks)
        self.bids.apply(bids, bid_numbers)
        self.asks.apply(asks, ask_numbers)

    def clear(self) -> None:
        self.bids = BookSide(is_ask=False)
        self.asks = BookSide(is_ask=True)

    def is_crossed(self) -> bool:
        best_bid, best_ask = self.bids.best_key(), self.asks.best_key()
        return best_bid is not None and best_ask is not None and best_bid >= -best_ask

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)

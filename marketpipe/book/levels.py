"""A price level as the exchange writes it and as the book publishes it, pure.

A level is published as ``["<price>","<quantity>"]`` with the exchange's own strings, byte for
byte. The book keys levels by ``float(price)``: exact, because ``float()`` is correctly rounded
and monotonic, and distinct decimals of at most 15 significant digits never share a float
(Binance prices have at most 7 + 8 digits). A longer price is refused rather than risk two prices
merging into one level.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated

import msgspec

INF = float("inf")
MAX_EXACT_DIGITS = 15


class BadLevel(ValueError):
    """A level no exchange can send (``kind``: price, quantity, precision, number)."""

    def __init__(self, kind: str, level: Sequence[str]) -> None:
        super().__init__(f"impossible level ({kind}): {list(level)!r}")
        self.kind = kind


def encode_level(price: str, quantity: str) -> bytes:
    """The JSON of one level exactly as published."""
    return f'["{price}","{quantity}"]'.encode()


def decode_fragment(fragment: bytes) -> tuple[str, str]:
    """Back from a level's JSON to ``(price, quantity)`` (tests, audits; not the hot path)."""
    split = fragment.index(b'"', 2)
    return fragment[2:split].decode(), fragment[split + 3 : -2].decode()


def price_of(fragment: bytes) -> str:
    """The price of the level whose JSON starts ``fragment``."""
    return fragment[2 : fragment.index(b'"', 2)].decode()


def check_precision(price: str, quantity: str) -> None:
    """Refuse a price too precise to keep its own float key (the book calls this only for
    prices longer than 16 characters: a shorter one has at most 15 digits)."""
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

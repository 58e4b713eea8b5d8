"""Typed decoding of Binance Spot stream frames (binance-spot.md §2.6), raw and combined.

msgspec Structs decode straight from the wire bytes (as fast as orjson into dicts, and typed; see
``bench/bench_engine.py``). Prices and quantities stay the exchange's strings. Every failure is one
:class:`BadFrame` whose ``kind`` the caller counts (``marketpipe_bad_input_total``); decoding never
raises anything else.

Payload events share the tag ``e``: :data:`MarketEvent` is their union, so one decoder reads any
event stream (including ``serverShutdown``). ``bookTicker`` has no ``e`` and gets its own decoders.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

PriceLevel = tuple[str, str]
"""``[price, quantity]``, both the exchange's decimal strings."""


class BadFrame(ValueError):
    """A frame that is not what the stream promises. ``kind``: ``json``, ``schema``, ``escape``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"bad frame ({kind}): {detail}")
        self.kind = kind
        self.detail = detail


class DepthUpdate(
    msgspec.Struct,
    frozen=True,
    gc=False,
    tag_field="e",
    tag="depthUpdate",
    rename={
        "event_time": "E",
        "symbol": "s",
        "first_update_id": "U",
        "final_update_id": "u",
        "bids": "b",
        "asks": "a",
    },
):
    """``<sym>@depth[@100ms]``: absolute quantities for the levels that changed in ``[U, u]``."""

    event_time: int
    symbol: str
    first_update_id: int
    final_update_id: int
    bids: list[PriceLevel]
    asks: list[PriceLevel]


class Trade(
    msgspec.Struct,
    frozen=True,
    gc=False,
    tag_field="e",
    tag="trade",
    rename={
        "event_time": "E",
        "symbol": "s",
        "trade_id": "t",
        "price": "p",
        "quantity": "q",
        "trade_time": "T",
        "buyer_is_maker": "m",
    },
):
    """``<sym>@trade``. ``buyer_is_maker`` true means the taker sold."""

    event_time: int
    symbol: str
    trade_id: int
    price: str
    quantity: str
    trade_time: int
    buyer_is_maker: bool


class Ticker(msgspec.Struct, frozen=True, gc=False, tag_field="e", tag="24hrTicker"):
    """``<sym>@ticker``. Field names are the exchange's (DESIGN §2 republishes them as they are)."""

    E: int
    s: str
    p: str
    P: str
    w: str
    c: str
    Q: str
    b: str
    B: str
    a: str
    A: str
    o: str
    h: str
    l: str  # noqa: E741 (the exchange's name)
    v: str
    q: str
    O: int  # noqa: E741
    C: int
    F: int
    L: int
    n: int
    x: str | None = None


class MiniTicker(msgspec.Struct, frozen=True, gc=False, tag_field="e", tag="24hrMiniTicker"):
    """``<sym>@miniTicker`` and the elements of ``!miniTicker@arr``."""

    E: int
    s: str
    c: str
    o: str
    h: str
    l: str  # noqa: E741
    v: str
    q: str


class ServerShutdown(msgspec.Struct, frozen=True, gc=False, tag_field="e", tag="serverShutdown"):
    """The server will close this connection soon: open a new one."""

    E: int


class BookTicker(
    msgspec.Struct,
    frozen=True,
    gc=False,
    rename={
        "update_id": "u",
        "symbol": "s",
        "bid_price": "b",
        "bid_quantity": "B",
        "ask_price": "a",
        "ask_quantity": "A",
    },
):
    """``<sym>@bookTicker``: best bid and ask; ``update_id`` is the book's update id."""

    update_id: int
    symbol: str
    bid_price: str
    bid_quantity: str
    ask_price: str
    ask_quantity: str


MarketEvent = DepthUpdate | Trade | Ticker | MiniTicker | ServerShutdown

P = TypeVar("P")


class Combined(msgspec.Struct, Generic[P], frozen=True, gc=False):
    """The ``/stream?streams=...`` wrapper: ``{"stream": name, "data": payload}``."""

    stream: str
    data: P


_event = msgspec.json.Decoder(MarketEvent)
_combined_event = msgspec.json.Decoder(Combined[MarketEvent])
_depth = msgspec.json.Decoder(DepthUpdate)
_combined_depth = msgspec.json.Decoder(Combined[DepthUpdate])
_book_ticker = msgspec.json.Decoder(BookTicker)
_combined_book_ticker = msgspec.json.Decoder(Combined[BookTicker])


def _bad(exc: msgspec.DecodeError) -> BadFrame:
    kind = "schema" if isinstance(exc, msgspec.ValidationError) else "json"
    return BadFrame(kind, str(exc))


def decode_event(frame: bytes | str) -> MarketEvent:
    """A raw-stream (``/ws/<name>``) frame carrying any tagged event."""
    try:
        return _event.decode(frame)
    except msgspec.DecodeError as exc:
        raise _bad(exc) from None


def decode_combined(frame: bytes | str) -> Combined[MarketEvent]:
    """A combined-stream frame carrying any tagged event."""
    try:
        return _combined_event.decode(frame)
    except msgspec.DecodeError as exc:
        raise _bad(exc) from None


def decode_depth(frame: bytes | str) -> DepthUpdate:
    """A raw ``depthUpdate`` frame, checked for use by the book (see :func:`_check_depth`)."""
    try:
        update = _depth.decode(frame)
    except msgspec.DecodeError as exc:
        raise _bad(exc) from None
    _check_depth(frame)
    return update


def decode_combined_depth(frame: bytes | str) -> Combined[DepthUpdate]:
    """A combined ``depthUpdate`` frame (the order book's hot path)."""
    try:
        combined = _combined_depth.decode(frame)
    except msgspec.DecodeError as exc:
        raise _bad(exc) from None
    _check_depth(frame)
    return combined


def _check_depth(frame: bytes | str) -> None:
    # Book levels are republished as pre-encoded JSON built from the decoded strings; a string
    # that needed an escape (control characters, quotes) is never a number, so refuse it here.
    escaped = b"\\" in frame if isinstance(frame, bytes) else "\\" in frame
    if escaped:
        raise BadFrame("escape", "escaped characters in a depth frame")


def decode_book_ticker(frame: bytes | str) -> BookTicker:
    try:
        return _book_ticker.decode(frame)
    except msgspec.DecodeError as exc:
        raise _bad(exc) from None


def decode_combined_book_ticker(frame: bytes | str) -> Combined[BookTicker]:
    try:
        return _combined_book_ticker.decode(frame)
    except msgspec.DecodeError as exc:
        raise _bad(exc) from None

"""The trade and ticker messages of DESIGN §2, built from stream events or REST rows (pure).

Trades: ``{"e":"trade","E","s","t","p","q","T","m","sd"}``. A REST ``/api/v3/trades`` row has no
event time, so its trade time stands in for ``E``.

Tickers: the exchange's own 24 h ticker keys (``e, E, s, p, P, w, x, c, Q, b, B, a, A, o, h, l,
v, q, O, C, F, L, n``), whether the ticker came from the ``@ticker`` stream or from REST
``ticker/24hr`` (whose long names are mapped onto the stream's letters; ``E`` is its
``closeTime``). Prices and quantities stay the exchange's strings throughout.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from marketpipe.exchange.messages import Ticker, Trade


class BadRow(ValueError):
    """A REST row that does not have the documented shape."""


def stamp(message: bytes, epoch: int, shard: int) -> bytes:
    """A JSON object message stamped with its publisher's ``epoch`` (DESIGN §8) and its pair's
    ``shard`` (§9)."""
    return message[:-1] + b',"epoch":%d,"shard":%d}' % (epoch, shard)


def trade_message(trade: Trade) -> bytes:
    return orjson.dumps(
        {
            "e": "trade",
            "E": trade.event_time,
            "s": trade.symbol,
            "t": trade.trade_id,
            "p": trade.price,
            "q": trade.quantity,
            "T": trade.trade_time,
            "m": trade.buyer_is_maker,
            "sd": "SELL" if trade.buyer_is_maker else "BUY",
        }
    )


class _RestTrade(
    msgspec.Struct,
    frozen=True,
    rename={"quantity": "qty", "buyer_is_maker": "isBuyerMaker"},
):
    id: int
    price: str
    quantity: str
    time: int
    buyer_is_maker: bool


def trades_from_rest(symbol: str, rows: list[dict[str, Any]]) -> list[Trade]:
    """REST trades rows (oldest first) as stream events; raises :class:`BadRow`."""
    try:
        parsed = msgspec.convert(rows, list[_RestTrade])
    except msgspec.ValidationError as exc:
        raise BadRow(f"trades: {exc}") from None
    return [
        Trade(r.time, symbol, r.id, r.price, r.quantity, r.time, r.buyer_is_maker) for r in parsed
    ]


_encoder = msgspec.json.Encoder()
_NO_X = b',"x":null}'


def ticker_message(ticker: Ticker) -> bytes:
    encoded = _encoder.encode(ticker)
    # `x` is the struct's last field: a stream that left it out gets no `"x":null` in our output
    return encoded[: -len(_NO_X)] + b"}" if ticker.x is None else encoded


# stream letter -> REST ticker/24hr name (``E`` has no REST twin: ``closeTime`` stands in)
REST_TICKER_NAMES = {
    "s": "symbol", "p": "priceChange", "P": "priceChangePercent", "w": "weightedAvgPrice",
    "x": "prevClosePrice", "c": "lastPrice", "Q": "lastQty", "b": "bidPrice", "B": "bidQty",
    "a": "askPrice", "A": "askQty", "o": "openPrice", "h": "highPrice", "l": "lowPrice",
    "v": "volume", "q": "quoteVolume", "O": "openTime", "C": "closeTime", "F": "firstId",
    "L": "lastId", "n": "count",
}  # fmt: skip


def tickers_from_rest(rows: list[dict[str, Any]]) -> tuple[list[Ticker], int]:
    """REST ``ticker/24hr`` FULL rows as stream tickers, and how many rows were malformed."""
    tickers: list[Ticker] = []
    bad = 0
    for row in rows:
        try:
            fields = {letter: row[name] for letter, name in REST_TICKER_NAMES.items()}
            ticker = msgspec.convert(
                {"e": "24hrTicker", "E": row["closeTime"], **fields}, Ticker, strict=True
            )
        except (KeyError, TypeError, msgspec.ValidationError):
            bad += 1
            continue
        tickers.append(ticker)
    return tickers, bad

"""The tickers service: message shape, and end to end against the simulator."""

from __future__ import annotations

import msgspec
import orjson

from marketpipe.exchange.messages import decode_combined
from marketpipe.services.feed_messages import ticker_message

TICKER_KEYS = [
    "e",
    "E",
    "s",
    "p",
    "P",
    "w",
    "c",
    "Q",
    "b",
    "B",
    "a",
    "A",
    "o",
    "h",
    "l",
    "v",
    "q",
    "O",
    "C",
    "F",
    "L",
    "n",
]

FRAME = {
    "stream": "btcusdt@ticker",
    "data": {
        "e": "24hrTicker", "E": 1765432101000, "s": "BTCUSDT", "p": "-512.30000000",
        "P": "-0.830", "w": "61544.12000000", "x": "61746.30000000", "c": "61234.02000000",
        "Q": "0.00300000", "b": "61234.01000000", "B": "0.40000000", "a": "61234.02000000",
        "A": "0.10300000", "o": "61746.32000000", "h": "62100.00000000",
        "l": "60800.00000000", "v": "15234.11000000", "q": "937599345.12000000",
        "O": 1765345701000, "C": 1765432101000, "F": 3990000000, "L": 3991234568,
        "n": 1234569,
    },
}  # fmt: skip


def test_ticker_message_is_the_exchange_payload() -> None:
    event = decode_combined(orjson.dumps(FRAME)).data
    assert orjson.loads(ticker_message(event)) == FRAME["data"]


def test_ticker_without_x_has_no_null() -> None:
    data = {k: v for k, v in FRAME["data"].items() if k != "x"}
    event = decode_combined(orjson.dumps({"stream": "btcusdt@ticker", "data": data})).data
    message = orjson.loads(ticker_message(event))
    assert message == data
    assert set(TICKER_KEYS) <= set(message)
    assert msgspec.json.decode(ticker_message(event))["s"] == "BTCUSDT"

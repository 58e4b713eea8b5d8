"""Frame decoding: every stream payload, raw and combined; one named error for anything wrong."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.exchange.messages import (
    BadFrame,
    BookTicker,
    DepthUpdate,
    MiniTicker,
    ServerShutdown,
    Ticker,
    Trade,
    decode_book_ticker,
    decode_combined,
    decode_combined_book_ticker,
    decode_combined_depth,
    decode_depth,
    decode_event,
)

DEPTH = (
    b'{"e":"depthUpdate","E":1765432100123,"s":"BTCUSDT","U":4410392818,"u":4410392825,'
    b'"b":[["61234.01000000","0.40000000"],["61233.50000000","0.00000000"]],'
    b'"a":[["61234.02000000","0.10300000"]]}'
)
TRADE = (
    b'{"e":"trade","E":1765432100200,"s":"BTCUSDT","t":3991234568,"p":"61234.02000000",'
    b'"q":"0.00300000","T":1765432100199,"m":false,"M":true}'
)
TICKER = (
    b'{"e":"24hrTicker","E":1765432101000,"s":"BTCUSDT","p":"-512.30000000","P":"-0.830",'
    b'"w":"61544.12000000","x":"61746.30000000","c":"61234.02000000","Q":"0.00300000",'
    b'"b":"61234.01000000","B":"0.40000000","a":"61234.02000000","A":"0.10300000",'
    b'"o":"61746.32000000","h":"62100.00000000","l":"60800.00000000","v":"15234.11000000",'
    b'"q":"937599345.12000000","O":1765345701000,"C":1765432101000,"F":3990000000,'
    b'"L":3991234568,"n":1234569}'
)
MINI = (
    b'{"e":"24hrMiniTicker","E":1,"s":"BTCUSDT","c":"1.0","o":"1.0","h":"1.0","l":"1.0",'
    b'"v":"1.0","q":"1.0"}'
)
BOOK_TICKER = (
    b'{"u":4410392825,"s":"BTCUSDT","b":"61234.01000000","B":"0.40000000",'
    b'"a":"61234.02000000","A":"0.10300000"}'
)


def combined(stream: str, payload: bytes) -> bytes:
    return b'{"stream":"%s","data":%s}' % (stream.encode(), payload)


def test_depth_update_keeps_the_exchange_strings() -> None:
    update = decode_combined_depth(combined("btcusdt@depth@100ms", DEPTH))
    assert update.stream == "btcusdt@depth@100ms"
    assert update.data == DepthUpdate(
        1765432100123,
        "BTCUSDT",
        4410392818,
        4410392825,
        [("61234.01000000", "0.40000000"), ("61233.50000000", "0.00000000")],
        [("61234.02000000", "0.10300000")],
    )
    assert decode_depth(DEPTH) == update.data
    assert decode_depth(DEPTH.decode()) == update.data


def test_every_tagged_event_decodes_raw_and_combined() -> None:
    for payload, kind in [
        (DEPTH, DepthUpdate),
        (TRADE, Trade),
        (TICKER, Ticker),
        (MINI, MiniTicker),
        (b'{"e":"serverShutdown","E":1770123456789}', ServerShutdown),
    ]:
        assert isinstance(decode_event(payload), kind)
        assert isinstance(decode_combined(combined("x", payload)).data, kind)
    trade = decode_event(TRADE)
    assert isinstance(trade, Trade)
    assert (trade.trade_id, trade.price, trade.buyer_is_maker) == (
        3991234568,
        "61234.02000000",
        False,
    )
    ticker = decode_event(TICKER)
    assert isinstance(ticker, Ticker)
    assert (ticker.c, ticker.n, ticker.x) == ("61234.02000000", 1234569, "61746.30000000")


def test_book_ticker_has_no_tag_and_its_own_decoders() -> None:
    ticker = decode_book_ticker(BOOK_TICKER)
    assert ticker == BookTicker(
        4410392825, "BTCUSDT", "61234.01000000", "0.40000000", "61234.02000000", "0.10300000"
    )
    assert decode_combined_book_ticker(combined("btcusdt@bookTicker", BOOK_TICKER)).data == ticker


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b"{", "json"),
        (b"", "json"),
        (b'{"result":null,"id":1}', "schema"),
        (DEPTH.replace(b'"U":4410392818', b'"U":"4410392818"'), "schema"),
        (DEPTH.replace(b'"depthUpdate"', b'"trade"'), "schema"),
        (DEPTH.replace(b'"0.10300000"', b'"0.1\\u0030"'), "escape"),
        (DEPTH.replace(b'["61234.02000000","0.10300000"]', b'["61234.02000000"]'), "schema"),
    ],
)
def test_malformed_depth_frames_raise_one_named_error(frame: bytes, kind: str) -> None:
    with pytest.raises(BadFrame) as err:
        decode_depth(frame)
    assert err.value.kind == kind


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_input_decodes_or_raises_bad_frame(frame: bytes | str) -> None:
    for decode in (decode_combined_depth, decode_combined, decode_event, decode_book_ticker):
        with contextlib.suppress(BadFrame):
            decode(frame)

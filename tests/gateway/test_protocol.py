"""The client protocol without sockets: parsing, replies, frames."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.gateway.protocol import (
    ProtocolError,
    data_frame,
    frame_prefix,
    json_object_from_pairs,
    merge_data_frames,
    parse_request,
    parse_topic,
    symbols_in,
)

KNOWN = symbols_in({"BTCUSDT", "ETHUSDT"})


def parse(message: object, max_topics: int = 10, max_bytes: int = 4096) -> object:
    raw = message if isinstance(message, bytes) else orjson.dumps(message)
    return parse_request(raw, max_bytes=max_bytes, max_topics=max_topics, known_symbol=KNOWN)


def test_comma_string_and_list_mean_the_same() -> None:
    a = parse({"action": "subscribe", "topics": "trades@BTCUSDT,orderbook@ethusdt", "id": 7})
    b = parse({"action": "subscribe", "topics": ["trades@BTCUSDT", "ORDERBOOK@ETHUSDT"], "id": 7})
    assert a == b
    assert a.topics == ("trades@BTCUSDT", "orderbook@ETHUSDT")  # type: ignore[attr-defined]
    assert a.request_id == 7  # type: ignore[attr-defined]


def test_all_unfolds_into_every_per_pair_channel() -> None:
    request = parse({"action": "subscribe", "topics": "all@BTCUSDT,trades@BTCUSDT"})
    assert request.topics == ("all@BTCUSDT", "trades@BTCUSDT")  # type: ignore[attr-defined]
    assert request.expanded == (  # type: ignore[attr-defined]
        "orderbook@BTCUSDT",
        "trades@BTCUSDT",
        "tickers@BTCUSDT",
        "snapshot_trades@BTCUSDT",
    )


def test_markets_views() -> None:
    assert parse_topic("markets@DATA", KNOWN) == ("markets@DATA", ("markets@DATA",))
    assert parse_topic("markets@snapshot", KNOWN)[0] == "markets@SNAPSHOT"
    with pytest.raises(ProtocolError, match="markets view"):
        parse_topic("markets@BTCUSDT", KNOWN)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "bad_request"),
        ({"action": "buy", "topics": "trades@BTCUSDT"}, "bad_request"),
        ({"action": "subscribe"}, "bad_request"),
        ({"action": "subscribe", "topics": ""}, "bad_request"),
        ({"action": "subscribe", "topics": [1]}, "bad_request"),
        ({"action": "subscribe", "topics": "candles@BTCUSDT"}, "unknown_channel"),
        ({"action": "subscribe", "topics": "trades@DOGEUSDT"}, "unknown_symbol"),
        ({"action": "subscribe", "topics": "trades"}, "bad_topic"),
        ({"action": "subscribe", "topics": "trades@BTC-USDT"}, "unknown_symbol"),
        ({"action": "subscribe", "topics": ",".join(["trades@BTCUSDT"] * 11)}, "too_many_topics"),
        ({"action": "subscribe", "topics": "trades@BTCUSDT", "pad": "x" * 5000}, "oversize"),
    ],
)
def test_bad_requests_are_named(message: object, kind: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse(message)
    assert caught.value.kind == kind


def test_error_keeps_the_id_when_it_can() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse({"action": "subscribe", "topics": "candles@BTCUSDT", "id": "abc"})
    assert caught.value.request_id == "abc"


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_fail_cleanly(raw: bytes) -> None:
    try:
        parse(raw)
    except ProtocolError as exc:
        assert exc.kind and exc.message


topic_names = st.sampled_from(
    ["trades", "orderbook", "tickers", "snapshot_trades", "all", "Trades", "candles", "markets"]
)
symbols = st.sampled_from(["BTCUSDT", "ethusdt", "DOGEUSDT", "DATA", "SNAPSHOT", "", "B@D"])


@given(
    st.lists(st.tuples(topic_names, symbols), min_size=1, max_size=12),
    st.booleans(),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=5)),
)
def test_valid_topics_round_trip_and_invalid_ones_are_refused(
    pairs: list[tuple[str, str]], as_list: bool, request_id: object
) -> None:
    names = [f"{c}@{s}" for c, s in pairs]
    message = {"action": "subscribe", "topics": names if as_list else ",".join(names)}
    message["id"] = request_id  # type: ignore[assignment]
    try:
        request = parse(message)
    except ProtocolError as exc:
        assert exc.request_id == request_id or exc.kind in ("bad_request",)
        return
    for topic in request.topics:  # type: ignore[attr-defined]
        channel, _, symbol = topic.partition("@")
        assert channel == channel.lower() and symbol == symbol.upper()
    assert len(set(request.expanded)) == len(request.expanded)  # type: ignore[attr-defined]


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.text(max_size=8), min_size=1))
def test_frames_splice_the_payload_unchanged(data: dict[str, str]) -> None:
    payload = orjson.dumps(data)
    frame = data_frame(frame_prefix("orderbook@BTCUSDT"), payload)
    assert orjson.loads(frame) == {"topic": "orderbook@BTCUSDT", "data": data}


@given(
    st.lists(st.dictionaries(st.sampled_from(["A", "B", "C", "D"]), st.integers(0, 99)), min_size=1)
)
def test_merged_market_deltas_keep_every_pair_newest_winning(deltas: list[dict[str, int]]) -> None:
    prefix = frame_prefix("markets@DATA")
    merged = merge_data_frames([data_frame(prefix, orjson.dumps(d)) for d in deltas])
    expected: dict[str, int] = {}
    for delta in deltas:
        expected |= delta
    assert orjson.loads(merged) == {"topic": "markets@DATA", "data": expected}


def test_cached_hash_becomes_one_object() -> None:
    pairs = {"BTCUSDT": b'{"c":"1"}', "ETHUSDT": b'{"c":"2"}'}
    assert orjson.loads(json_object_from_pairs(pairs)) == {
        "BTCUSDT": {"c": "1"},
        "ETHUSDT": {"c": "2"},
    }

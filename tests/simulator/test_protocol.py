"""Pure protocol pieces: stream names, control sessions, weights, rate limits, fault plans."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.simulator.faults import FaultError, FaultPlan, parse_fault
from marketpipe.simulator.protocol import (
    ControlSession,
    InvalidStream,
    MessageRate,
    PeriodicStream,
    WeightLimiter,
    canonical_stream,
    periodic_stream,
    query_streams,
    text_frame_header,
    url_streams,
    window_ticker_weight,
)


def test_stream_names() -> None:
    assert canonical_stream("BTCUSDT@depth@100ms") == "btcusdt@depth@100ms"
    assert canonical_stream("btcusdt@depth@1000ms") == "btcusdt@depth"
    assert canonical_stream("!miniTicker@arr") == "!miniTicker@arr"
    assert canonical_stream("!ticker@arr") == "!ticker@arr"  # retired: accepted, never fed
    for bad in ("btcusdt", "btc usdt@trade", "btcusdt@depth@10ms", "@trade", "!nope"):
        with pytest.raises(InvalidStream):
            canonical_stream(bad)


def test_url_stream_names() -> None:
    assert url_streams("") == [] and url_streams("0") == []  # ccxt opens /ws/<n>
    assert url_streams("btcusdt@trade/1/BTCUSDT@trade/btcusdt@trade") == [
        "btcusdt@trade",
        "BTCUSDT@trade",
    ]
    assert query_streams("x=1&streams=a@trade/bnbusdt@kline_1h@+08:00/b%40depth") == [
        "a@trade",
        "bnbusdt@kline_1h@+08:00",
        "b@depth",
    ]
    assert query_streams("streams=") == [] == query_streams("")
    assert periodic_stream("btcusdt@avgPrice") == PeriodicStream("BTCUSDT")
    assert periodic_stream("btcusdt@kline_1m@+08:00") == PeriodicStream(
        "BTCUSDT", "1m", 8 * 3600_000
    )
    assert periodic_stream("btcusdt@kline_1s") == PeriodicStream("BTCUSDT", "1s")
    assert periodic_stream("btcusdt@kline_1s").seconds == 1  # type: ignore[union-attr]
    assert periodic_stream("btcusdt@kline_4h").seconds == 2  # type: ignore[union-attr]
    assert periodic_stream("btcusdt@depth") is None and periodic_stream("!miniTicker@arr") is None
    assert [window_ticker_weight(n) for n in (1, 2, 50, 51, 100)] == [4, 8, 200, 200, 200]


def reply(session: ControlSession, request: object) -> dict:
    text = request if isinstance(request, str) else orjson.dumps(request)
    return orjson.loads(session.receive(text).reply)


def test_control_session_replies() -> None:
    s = ControlSession(max_streams=3)
    assert reply(s, {"method": "SUBSCRIBE", "params": ["a@trade", "b@trade"], "id": 1}) == {
        "result": None,
        "id": 1,
    }
    assert reply(s, {"method": "LIST_SUBSCRIPTIONS", "id": "x1"})["result"] == [
        "a@trade",
        "b@trade",
    ]
    uuid = "0f8e1c2a-3b4d-4e5f-9a6b-7c8d9e0f1a2b"
    assert reply(s, {"method": "LIST_SUBSCRIPTIONS", "id": uuid})["id"] == uuid
    assert reply(s, {"method": "LIST_SUBSCRIPTIONS", "id": "a_b"})["error"]["code"] == 2
    assert reply(s, {"method": "LIST_SUBSCRIPTIONS", "id": "x" * 37})["error"]["code"] == 2
    too_many = reply(s, {"method": "SUBSCRIBE", "params": ["c@trade", "d@trade"], "id": 2})
    assert too_many["error"]["code"] == 2 and too_many["id"] == 2
    assert reply(s, {"method": "UNSUBSCRIBE", "params": ["a@trade"], "id": None})["result"] is None
    assert reply(s, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 3})["id"] == 3
    assert reply(s, {"method": "GET_PROPERTY", "params": ["combined"], "id": 4})["result"] is True
    assert reply(s, "{")["error"]["code"] == 3
    assert reply(s, {"params": [], "id": 5})["error"]["code"] == 2
    assert reply(s, {"method": "X", "id": 6})["error"]["code"] == 2
    assert reply(s, {"method": "SUBSCRIBE", "params": ["a@trade"], "id": 1.5})["error"]["code"] == 2
    assert reply(s, {"method": "GET_PROPERTY", "params": [7], "id": 7})["error"]["code"] == 2
    assert reply(s, {"method": "GET_PROPERTY", "params": ["x"], "id": 8})["error"]["code"] == 0
    assert (
        reply(s, {"method": "SET_PROPERTY", "params": ["combined", "y"], "id": 9})["error"]["code"]
        == 1
    )


@given(st.lists(st.sampled_from(["a@trade", "b@trade", "c@ticker", "bad name"]), max_size=8))
def test_subscriptions_stay_a_set_within_the_limit(names: list[str]) -> None:
    s = ControlSession(max_streams=2)
    result = s.receive(orjson.dumps({"method": "SUBSCRIBE", "params": names, "id": 1}))
    assert len(s.subscriptions) <= 2
    assert result.subscribe == list(s.subscriptions)


def test_names_are_kept_as_subscribed() -> None:
    s = ControlSession()
    names = ["ethusdt@depth@1000ms", "ethusdt@depth", "BTCUSDT@trade"]
    assert s.receive(orjson.dumps({"method": "SUBSCRIBE", "params": names, "id": 1})).subscribe == (
        names
    )
    assert reply(s, {"method": "LIST_SUBSCRIPTIONS", "id": 2})["result"] == names
    gone = s.receive(orjson.dumps({"method": "UNSUBSCRIBE", "params": ["ethusdt@depth"], "id": 3}))
    assert gone.unsubscribe == ["ethusdt@depth"]
    assert list(s.subscriptions) == ["ethusdt@depth@1000ms", "BTCUSDT@trade"]


def test_weight_limit_then_ban() -> None:
    limiter = WeightLimiter(limit=10, ban_seconds=30)
    assert limiter.charge("a", 5, 60.0).status == 200
    assert limiter.charge("a", 5, 61.0).used == 10
    over = limiter.charge("a", 5, 62.0)
    assert over.status == 429 and over.retry_after == 58
    assert limiter.charge("b", 5, 62.0).status == 200  # per client
    ban = limiter.charge("a", 1, 63.0)
    assert ban.status == 418 and ban.retry_after == 30
    assert limiter.charge("a", 1, 80.0).status == 418  # banned for 30 s
    assert limiter.charge("a", 1, 125.0).status == 200  # ban over, new minute


def test_message_rate() -> None:
    rate = MessageRate(limit=5)
    assert all(rate.allow(0.1 * i) for i in range(5))
    assert not rate.allow(0.5)
    assert MessageRate(limit=5).allow(0.0)
    slow = MessageRate(limit=5)
    assert all(slow.allow(0.3 * i) for i in range(40))


@given(st.integers(min_value=0, max_value=2**20))
def test_text_frame_header(length: int) -> None:
    header = text_frame_header(length)
    assert header[0] == 0x81
    if length < 126:
        assert header[1] == length
    elif length < 65536:
        assert header[1] == 126 and int.from_bytes(header[2:], "big") == length
    else:
        assert header[1] == 127 and int.from_bytes(header[2:], "big") == length


def test_fault_plan_counts_and_symbols() -> None:
    plan = FaultPlan(seed=1)
    plan.add(parse_fault({"type": "drop", "symbol": "btcusdt", "count": 2}))
    assert plan.on_diff("ETHUSDT") is None
    assert [plan.on_diff("BTCUSDT") for _ in range(3)] == ["drop", "drop", None]
    plan.add(parse_fault({"type": "duplicate", "probability": 0.5}))
    hits = sum(plan.on_diff("ETHUSDT") == "duplicate" for _ in range(1000))
    assert 400 < hits < 600
    plan.clear()
    plan.add(parse_fault({"type": "rest_error", "status": 429, "path": "/api/v3/depth"}))
    assert plan.on_rest("/api/v3/time") is None
    fault = plan.on_rest("/api/v3/depth")
    assert fault is not None and fault.status == 429
    for bad in (
        {"type": "explode"},
        {"type": "drop", "count": 0},
        {"type": "drop", "x": 1},
        {"type": "rest_error", "status": 200},
        {"type": "drop", "probability": 2},
        {"type": "mute_stream"},
        {"type": "mute_stream", "stream": "btcusdt@nothing"},
        {"type": "mute_stream", "symbol": "ETHUSDT", "stream": "btcusdt@trade"},
    ):
        with pytest.raises(FaultError):
            parse_fault(bad)
    muted = parse_fault({"type": "mute_stream", "stream": "btcusdt@depth@100ms"})
    assert muted.symbol == "BTCUSDT"  # its connections are those of the stream's symbol

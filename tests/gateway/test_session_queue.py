"""The per-client state machine and the send queue, without sockets."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.gateway.protocol import Conflation, symbols_in
from marketpipe.gateway.send_queue import Pushed, SendQueue
from marketpipe.gateway.session import CLOSE_POLICY, ClientSession, Limits

LIMITS = Limits(max_topics=5, max_message_bytes=512, messages_per_second=5)
KNOWN = symbols_in({"BTCUSDT", "ETHUSDT"})


def sub(topics: str, action: str = "subscribe", request_id: object = 1) -> bytes:
    return orjson.dumps({"action": action, "topics": topics, "id": request_id})


def test_subscribe_then_unsubscribe() -> None:
    session = ClientSession(LIMITS, KNOWN, now=0)
    out = session.receive(sub("all@BTCUSDT"), now=0)
    assert out.joined == ("orderbook@BTCUSDT", "trades@BTCUSDT", "tickers@BTCUSDT")
    assert out.once == ("snapshot_trades@BTCUSDT",)
    assert orjson.loads(out.reply or b"") == {
        "result": "subscribed",
        "topics": ["all@BTCUSDT"],
        "id": 1,
    }
    again = session.receive(sub("trades@BTCUSDT"), now=0.5)
    assert again.joined == ()
    out = session.receive(sub("trades@BTCUSDT,orderbook@ETHUSDT", "unsubscribe"), now=1)
    assert out.left == ("trades@BTCUSDT",)
    assert list(session.topics) == ["orderbook@BTCUSDT", "tickers@BTCUSDT"]


def test_topic_limit_counts_the_whole_connection() -> None:
    session = ClientSession(LIMITS, KNOWN, now=0)
    session.receive(sub("all@BTCUSDT"), now=0)
    out = session.receive(sub("all@ETHUSDT"), now=1)
    assert out.bad_input == "too_many_topics" and out.close_code is None
    assert orjson.loads(out.reply or b"")["error"]["code"] == 400
    assert len(session.topics) == 3


def test_bad_message_keeps_the_connection_flood_closes_it() -> None:
    session = ClientSession(LIMITS, KNOWN, now=0)
    out = session.receive(b"{oops", now=0)
    assert out.bad_input == "malformed_json" and out.close_code is None
    closes = [session.receive(sub("trades@BTCUSDT"), now=0.01).close_code for _ in range(20)]
    assert closes[0] is None and CLOSE_POLICY in closes


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200))
def test_rate_limit_never_allows_more_than_burst_plus_rate_times_time(gaps: list[float]) -> None:
    session = ClientSession(LIMITS, KNOWN, now=0)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        if session.receive(b"{}", now).close_code is None:
            allowed += 1
    assert allowed <= LIMITS.burst + LIMITS.messages_per_second * now + 1e-9


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["orderbook@X", "tickers@X", "trades@X", "markets@DATA"]),
            st.integers(0, 99),
        ),
        max_size=60,
    ),
    st.integers(1, 20),
)
def test_queue_conflates_latest_values_and_bounds_the_backlog(
    pushes: list[tuple[str, int]], bound: int
) -> None:
    queue = SendQueue(bound)
    kinds = {
        "orderbook@X": Conflation.REPLACE,
        "tickers@X": Conflation.REPLACE,
        "trades@X": Conflation.NONE,
        "markets@DATA": Conflation.MERGE,
    }
    sent: list[tuple[str, int]] = []
    for topic, value in pushes:
        frame = orjson.dumps({"topic": topic, "data": {str(value): value}})
        result = queue.push(frame, topic, kinds[topic])
        if result is Pushed.REFUSED:
            assert queue.overflowed
        if result is Pushed.OVERFLOW:
            assert len(queue) == bound + 1
        if result is not Pushed.REFUSED:
            sent.append((topic, value))
        assert len(queue) <= bound + 1
    frames = [orjson.loads(f) for f in queue.take_all()]
    by_topic: dict[str, list[dict[str, int]]] = {}
    for frame in frames:
        by_topic.setdefault(frame["topic"], []).append(frame["data"])
    for topic in ("orderbook@X", "tickers@X", "markets@DATA"):
        assert len(by_topic.get(topic, [])) <= 1
    for topic in ("orderbook@X", "tickers@X"):
        values = [v for t, v in sent if t == topic]
        if values:
            assert by_topic[topic] == [{str(values[-1]): values[-1]}]
    data = [v for t, v in sent if t == "markets@DATA"]
    if data:
        assert by_topic["markets@DATA"] == [{str(v): v for v in data}]
    assert [d for d in by_topic.get("trades@X", [])] == [
        {str(v): v} for t, v in sent if t == "trades@X"
    ]

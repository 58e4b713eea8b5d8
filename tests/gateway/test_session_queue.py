"""The per-client state machine and the send queue, without sockets."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.gateway.protocol import Conflation, symbols_in
from marketpipe.gateway.send_queue import ENTRY_COST, Pushed, SendQueue
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


KINDS = {
    "orderbook@X": Conflation.REPLACE,
    "tickers@X": Conflation.REPLACE,
    "trades@X": Conflation.NONE,
    "markets@DATA": Conflation.MERGE,
}


def frame_of(topic: str, value: int, padding: int) -> bytes:
    return orjson.dumps({"topic": topic, "data": {str(value): value}, "pad": "x" * padding})


@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(sorted(KINDS)),
                st.integers(0, 99),
                st.integers(0, 300),  # padding: frames of different sizes
                st.integers(0, 1500),  # what the socket still holds
                st.booleans(),  # a latest value: hold a place rather than queue the frame
            ),
            st.just(("pop", 0, 0, 0, False)),
        ),
        max_size=80,
    ),
    st.integers(200, 3000),
)
def test_queue_conflates_latest_values_and_bounds_the_bytes(
    steps: list[tuple[str, int, int, int, bool]], max_bytes: int
) -> None:
    queue = SendQueue(max_bytes)
    pushed: list[tuple[str, int]] = []
    popped: list[dict[str, object]] = []
    newest: dict[str, bytes] = {}  # what the hub holds as each latest-value topic's newest
    conflated = 0

    def take() -> bool:
        taken = queue.pop()
        if taken is None:
            return False
        topic, frame = taken
        if frame is None:  # a held place: the hub's newest frame of the topic
            assert topic is not None
            frame = newest[topic]
        popped.append(orjson.loads(frame))
        return True

    for topic, value, padding, unsent, hold in steps:
        if topic == "pop":
            take()
            continue
        frame = frame_of(topic, value, padding)
        before = queue.bytes
        if hold and KINDS[topic] is Conflation.REPLACE:
            result = queue.hold(topic, len(frame), unsent)
        else:
            result = queue.push(frame, topic, KINDS[topic], unsent)
        if result is Pushed.OVERFLOW:
            # judged on what it already held, never on the frame that arrives
            assert before + unsent > max_bytes and queue.overflowed
            queue.clear()  # the owner cuts the client: nothing more is sent
            assert len(queue) == 0 and queue.bytes == 0 and queue.pop() is None
            return
        assert before + unsent <= max_bytes
        newest[topic] = frame
        conflated += result is Pushed.CONFLATED
        # the bound plus one frame (and its bookkeeping), at most
        assert queue.bytes <= max_bytes + len(frame) + ENTRY_COST
        pushed.append((topic, value))
    while take():
        pass
    assert len(queue) == 0 and queue.bytes == 0
    # counted for the metric: every frame that did not go out as a frame of its own
    assert queue.conflated == conflated == len(pushed) - len(popped)
    by_topic: dict[str, list[dict[str, int]]] = {}
    for message in popped:
        by_topic.setdefault(str(message["topic"]), []).append(message["data"])  # type: ignore[arg-type]
    # trades: every one, in order
    assert by_topic.get("trades@X", []) == [{str(v): v} for t, v in pushed if t == "trades@X"]
    # latest values: a subsequence of what was pushed, ending with the newest
    for topic in ("orderbook@X", "tickers@X"):
        values = [v for t, v in pushed if t == topic]
        got = [next(iter(d.values())) for d in by_topic.get(topic, [])]
        assert (got[-1:] == values[-1:]) and len(got) <= len(values)
        remaining = iter(values)
        assert all(any(g == v for v in remaining) for g in got)
    # deltas: merged in order, nothing lost, newer winning
    expected: dict[str, int] = {}
    for t, v in pushed:
        if t == "markets@DATA":
            expected[str(v)] = v
    merged: dict[str, int] = {}
    for data in by_topic.get("markets@DATA", []):
        merged |= data
    assert merged == expected


def test_discard_and_clear_let_go_of_the_bytes() -> None:
    queue = SendQueue(10_000)
    queue.push(frame_of("orderbook@X", 1, 100), "orderbook@X", Conflation.REPLACE)
    queue.push(frame_of("trades@X", 2, 100), "trades@X", Conflation.NONE)
    queue.push(frame_of("markets@DATA", 3, 100), "markets@DATA", Conflation.MERGE)
    assert queue.discard("orderbook@X") and not queue.discard("orderbook@X")
    assert len(queue) == 2
    first = queue.pop()
    assert first is not None and first[0] is None and first[1] is not None
    assert orjson.loads(first[1])["topic"] == "trades@X"
    queue.clear()
    assert len(queue) == 0 and queue.bytes == 0 and queue.pop() is None


def test_after_overflowing_the_queue_refuses_everything() -> None:
    queue = SendQueue(1000)
    frame = frame_of("trades@X", 1, 900)
    assert queue.push(frame, "trades@X") is Pushed.QUEUED
    assert queue.push(frame, "trades@X") is Pushed.OVERFLOW  # it held more than the bound
    assert queue.push(frame, "trades@X") is Pushed.REFUSED
    assert queue.hold("orderbook@X", 10) is Pushed.REFUSED

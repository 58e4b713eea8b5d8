"""The per-client state machine, the send queue and the fan-out hub, without sockets."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.gateway.hub import Hub
from marketpipe.gateway.ordering import RESET_AFTER_STALE, OrderGuard, book_version
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


def book(last_update_id: int, epoch: int = 1, seq: int = 1) -> bytes:
    return orjson.dumps(
        {
            "symbol": "BTCUSDT",
            "lastUpdateId": last_update_id,
            "E": 1,
            "seq": seq,
            "epoch": epoch,
            "bids": [["1.0", "2"]],
            "asks": [["1.1", "3"]],
        }
    )


class Recorder:
    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []

    def deliver(self, topic: str, frame: bytes, how: Conflation) -> None:
        self.frames.append((topic, frame))


def test_hub_wanted_while_subscribed_and_latest_on_join() -> None:
    hub = Hub()
    a, b = Recorder(), Recorder()
    assert hub.add(a, "orderbook@BTCUSDT")  # nothing in memory: read the cache
    assert hub.wanted("orderbook@BTCUSDT")
    assert hub.publish("orderbook@BTCUSDT", book(5)) == 1
    assert not hub.add(b, "orderbook@BTCUSDT")
    assert b.frames == a.frames  # the newest value at once, the very same bytes
    assert not hub.remove(a, "orderbook@BTCUSDT")
    assert hub.remove(b, "orderbook@BTCUSDT")
    assert not hub.wanted("orderbook@BTCUSDT")
    assert hub.publish("orderbook@BTCUSDT", book(6)) == 0


def test_hub_never_sends_an_older_book_even_from_the_cache() -> None:
    hub = Hub()
    client = Recorder()
    hub.add(client, "orderbook@BTCUSDT")
    hub.publish("orderbook@BTCUSDT", book(7))  # live arrives while Redis is read
    hub.publish("orderbook@BTCUSDT", book(6), from_cache=True)  # the cached value is older
    hub.publish("orderbook@BTCUSDT", book(9), from_cache=True)  # or newer
    hub.publish("orderbook@BTCUSDT", book(8))  # a live message still in flight
    hub.publish("orderbook@BTCUSDT", book(9))  # the same state again
    hub.publish("orderbook@BTCUSDT", book(10))
    ids = [orjson.loads(f)["data"]["lastUpdateId"] for _, f in client.frames]
    assert ids == [7, 9, 10]


def test_unversioned_cache_value_loses_to_a_live_one() -> None:
    hub = Hub()
    client = Recorder()
    hub.add(client, "markets@SNAPSHOT")
    hub.publish("markets@SNAPSHOT", b'{"live":1}')
    hub.publish("markets@SNAPSHOT", b'{"cached":1}', from_cache=True)
    assert [orjson.loads(f)["data"] for _, f in client.frames] == [{"live": 1}]


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 3), st.integers(0, 50)), max_size=80))
def test_guard_output_only_rises_until_a_long_stale_run_resets_it(
    versions: list[tuple[int, int, int]],
) -> None:
    guard = OrderGuard()
    accepted: list[tuple[int, ...]] = []
    stale_run = 0
    for u, epoch, seq in versions:
        version = book_version(book(u, epoch, seq))
        if guard.accept(version):
            assert version is not None
            if accepted and version <= accepted[-1]:
                assert stale_run == RESET_AFTER_STALE - 1
            accepted.append(version)
            stale_run = 0
        else:
            stale_run += 1

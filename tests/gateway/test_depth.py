"""depth@ in the gateway, pure: what each client receives always chains, whatever NATS does."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.book.delta import ViewPublisher
from marketpipe.client.book import BookKeeper
from marketpipe.gateway.hub import Hub
from marketpipe.gateway.protocol import Conflation
from marketpipe.gateway.send_queue import Pushed, SendQueue
from tests.book.test_delta import Settings, live_book, views
from tests.client.test_book import published_stream

TOPIC = "depth@BTCUSDT"


class Client:
    """A subscriber that reads every frame at once, with the client library's keeper."""

    def __init__(self) -> None:
        self.keeper = BookKeeper("BTCUSDT")
        self.frames: list[dict] = []

    def deliver(self, topic: str, frame: bytes, how: Conflation) -> bool:
        message = orjson.loads(frame)
        self.frames.append(message)
        if message["type"] == "snapshot":
            self.keeper.on_view(message["data"])
        else:
            self.keeper.on_delta(message["data"])
        assert not self.keeper.stats.resyncs, self.keeper.stats.resyncs  # never a broken chain
        return False  # it keeps up: it takes every frame


@settings(max_examples=100, deadline=None)
@given(st.lists(views(), min_size=2, max_size=12), st.data())
def test_each_client_gets_a_snapshot_then_a_chain_whatever_nats_does(sequence, data) -> None:
    published, sent = published_stream(sequence, data)
    hub = Hub()
    clients = [Client()]
    hub.join(clients[0], TOPIC)
    hub.serve(clients[0], TOPIC)
    for kind, message in sent:
        fault = data.draw(st.sampled_from(["deliver"] * 6 + ["drop", "duplicate"]))
        for _ in range({"drop": 0, "duplicate": 2}.get(fault, 1)):
            hub.publish_depth(TOPIC, orjson.dumps(message), is_delta=kind == "delta")
        if data.draw(st.integers(0, 4)) == 0:  # someone subscribes now
            clients.append(Client())
            hub.join(clients[-1], TOPIC)
            hub.serve(clients[-1], TOPIC)
    for client in clients:
        book = client.keeper.book
        if book is not None:
            want = published[book.epoch, book.seq]
            assert [list(lv) for lv in book.bids] == want["bids"]
            assert [list(lv) for lv in book.asks] == want["asks"]
            assert client.frames[0]["type"] == "snapshot"


def test_an_unsent_depth_frame_becomes_a_held_place_for_a_fresh_snapshot() -> None:
    queue = SendQueue(1_000_000)
    assert queue.push(b"delta 5", TOPIC, Conflation.SNAPSHOT) is Pushed.QUEUED
    assert queue.push(b"delta 6", TOPIC, Conflation.SNAPSHOT) is Pushed.CONFLATED
    assert queue.pop() == (TOPIC, None)  # no frame: the writer takes the hub's snapshot there
    assert queue.pop() is None


def test_a_subscriber_that_held_a_place_takes_a_snapshot_at_the_chain_head() -> None:
    views, sent = [], []
    publisher = ViewPublisher()
    for seq in (1, 2, 3):
        rendered = publisher.render(
            live_book(seq, {"9.00": str(seq)}, {"10.00": "1"}), Settings(100.0, 10), seq, 1
        )
        assert rendered is not None
        publisher.published()
        views.append(orjson.loads(rendered[0]))
        sent.append(rendered)

    class Parking(Client):
        def deliver(self, topic: str, frame: bytes, how: Conflation) -> bool:
            super().deliver(topic, frame, how)
            return True  # behind from now on: it holds a place instead of taking frames

    hub, parked = Hub(), Parking()
    hub.join(parked, TOPIC)
    hub.serve(parked, TOPIC)
    hub.publish_depth(TOPIC, sent[0][0], is_delta=False)  # the chain starts: a snapshot
    for full, delta in sent[1:]:
        hub.publish_depth(TOPIC, delta, is_delta=True)  # skipped: it holds a place
        hub.publish_depth(TOPIC, full, is_delta=False)
    assert [f["type"] for f in parked.frames] == ["snapshot"]
    snapshot = orjson.loads(hub.unpark(parked, TOPIC) or b"null")
    assert snapshot["type"] == "snapshot" and snapshot["data"]["seq"] == 3
    assert snapshot["data"]["bids"] == views[-1]["bids"]

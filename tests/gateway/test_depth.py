"""depth@ in the gateway, pure: what each client receives always chains, whatever NATS does."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.client.book import BookKeeper
from marketpipe.gateway.hub import Hub
from marketpipe.gateway.protocol import Conflation
from marketpipe.gateway.send_queue import Pushed, SendQueue
from tests.book.test_delta import views
from tests.client.test_book import published_stream

TOPIC = "depth@BTCUSDT"


class Client:
    """A subscriber that reads every frame at once, with the client library's keeper."""

    def __init__(self) -> None:
        self.keeper = BookKeeper("BTCUSDT")
        self.frames: list[dict] = []

    def deliver(self, topic: str, frame: bytes, how: Conflation) -> None:
        message = orjson.loads(frame)
        self.frames.append(message)
        if message["type"] == "snapshot":
            self.keeper.on_view(message["data"])
        else:
            self.keeper.on_delta(message["data"])
        assert not self.keeper.stats.resyncs, self.keeper.stats.resyncs  # never a broken chain


@settings(max_examples=100, deadline=None)
@given(st.lists(views(), min_size=2, max_size=12), st.data())
def test_each_client_gets_a_snapshot_then_a_chain_whatever_nats_does(sequence, data) -> None:
    published, sent = published_stream(sequence, data)
    hub = Hub()
    clients = [Client()]
    hub.add(clients[0], TOPIC)
    for kind, message in sent:
        fault = data.draw(st.sampled_from(["deliver"] * 6 + ["drop", "duplicate"]))
        for _ in range({"drop": 0, "duplicate": 2}.get(fault, 1)):
            hub.publish_depth(TOPIC, orjson.dumps(message), is_delta=kind == "delta")
        if data.draw(st.integers(0, 4)) == 0:  # someone subscribes now
            clients.append(Client())
            hub.add(clients[-1], TOPIC)
    for client in clients:
        book = client.keeper.book
        if book is not None:
            want = published[book.epoch, book.seq]
            assert [list(lv) for lv in book.bids] == want["bids"]
            assert [list(lv) for lv in book.asks] == want["asks"]
            assert client.frames[0]["type"] == "snapshot"


def test_a_backlogged_client_gets_a_fresh_snapshot_instead_of_its_unsent_deltas() -> None:
    queue = SendQueue(10, snapshot_of=lambda topic: b"fresh snapshot of " + topic.encode())
    assert queue.push(b"delta 5", TOPIC, Conflation.SNAPSHOT) is Pushed.QUEUED
    assert queue.push(b"delta 6", TOPIC, Conflation.SNAPSHOT) is Pushed.CONFLATED
    assert queue.take_all() == [b"fresh snapshot of depth@BTCUSDT"]
    unknown = SendQueue(10, snapshot_of=lambda topic: None)
    unknown.push(b"delta 5", TOPIC, Conflation.SNAPSHOT)
    assert unknown.push(b"delta 6", TOPIC, Conflation.SNAPSHOT) is Pushed.OVERFLOW

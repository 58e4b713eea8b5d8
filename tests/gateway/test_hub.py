"""The fan-out hub and the ordering guard, without sockets."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.gateway.hub import Hub
from marketpipe.gateway.ordering import RESET_AFTER_STALE, OrderGuard, book_stamp
from marketpipe.gateway.protocol import Conflation

BOOK = "orderbook@BTCUSDT"


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

    def deliver(self, topic: str, frame: bytes, how: Conflation) -> bool:
        self.frames.append((topic, frame))
        return False

    def update_ids(self) -> list[int]:
        return [orjson.loads(f)["data"]["lastUpdateId"] for _, f in self.frames]


def subscribed(hub: Hub, client: Recorder, topic: str) -> bool:
    hub.join(client, topic)
    return hub.serve(client, topic)


def test_hub_wanted_while_subscribed_and_latest_on_join() -> None:
    hub = Hub()
    a, b = Recorder(), Recorder()
    assert subscribed(hub, a, BOOK)  # nothing in memory: read the cache
    assert hub.wanted(BOOK)
    assert hub.publish(BOOK, book(5)) == 1
    assert not subscribed(hub, b, BOOK)
    assert b.frames == a.frames  # the newest value at once, the very same bytes
    hub.remove(a, BOOK)
    assert hub.wanted(BOOK)
    hub.remove(b, BOOK)
    assert not hub.wanted(BOOK)
    assert hub.publish(BOOK, book(6)) == 0


def test_a_joining_client_keeps_the_topic_wanted_while_the_last_holder_leaves() -> None:
    """Issue 12, scenario 3, in the pure core: interest counts from the join, not the serve."""
    hub = Hub()
    holder, joining = Recorder(), Recorder()
    subscribed(hub, holder, BOOK)
    while hub.take_changed() is not None:
        pass
    hub.publish(BOOK, book(5))
    hub.join(joining, BOOK)  # the shell now waits for NATS (another topic of the same request)
    hub.remove(holder, BOOK)
    assert hub.wanted(BOOK) and hub.take_changed() is None  # the subscription must stay
    assert not hub.serve(joining, BOOK)  # the newest book from memory, no cache read
    hub.publish(BOOK, book(6))
    assert joining.update_ids() == [5, 6]


def test_a_client_that_left_while_joining_is_not_served() -> None:
    hub = Hub()
    client = Recorder()
    hub.join(client, BOOK)
    hub.remove(client, BOOK)
    assert not hub.serve(client, BOOK) and not hub.wanted(BOOK)
    assert hub.publish(BOOK, book(1)) == 0


@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(["join", "serve", "remove"]),
                st.integers(0, 2),
                st.sampled_from([BOOK, "trades@BTCUSDT"]),
            ),
            st.tuples(st.sampled_from(["take", "apply"]), st.just(0), st.just("")),
        ),
        max_size=60,
    )
)
def test_subscriptions_end_up_exactly_the_wanted_topics(
    steps: list[tuple[str, int, str]],
) -> None:
    """A model of the shell: it takes a changed topic, decides from ``wanted`` then, and
    applies the decision later (the await on NATS) while clients keep coming and going."""
    hub = Hub()
    clients = [Recorder() for _ in range(3)]
    upstream: set[str] = set()
    decided: list[tuple[str, bool]] = []

    def apply_one() -> None:
        topic, wanted = decided.pop(0)
        if wanted:
            upstream.add(topic)
        else:
            upstream.discard(topic)

    for action, who, topic in steps:
        if action == "join":
            hub.join(clients[who], topic)
        elif action == "serve":
            hub.serve(clients[who], topic)
        elif action == "remove":
            hub.remove(clients[who], topic)
        elif action == "take" and (changed := hub.take_changed()) is not None:
            decided.append((changed, hub.wanted(changed)))
        elif action == "apply" and decided:
            apply_one()
    while decided or (changed := hub.take_changed()) is not None:
        if not decided:
            decided.append((changed, hub.wanted(changed)))
        apply_one()
    assert upstream == {t for t in (BOOK, "trades@BTCUSDT") if hub.wanted(t)}


def test_hub_never_sends_an_older_book_even_from_the_cache() -> None:
    hub = Hub()
    client = Recorder()
    subscribed(hub, client, BOOK)
    hub.publish(BOOK, book(7))  # live arrives while Redis is read
    hub.publish(BOOK, book(6), from_cache=True)  # the cached value is older
    hub.publish(BOOK, book(9), from_cache=True)  # or newer
    hub.publish(BOOK, book(8))  # a live message still in flight
    hub.publish(BOOK, book(9))  # the same state again
    hub.publish(BOOK, book(10))
    assert client.update_ids() == [7, 9, 10]


def test_a_topic_held_again_gets_the_cached_state_its_guard_last_let_through() -> None:
    hub = Hub()
    first, second = Recorder(), Recorder()
    subscribed(hub, first, BOOK)
    hub.publish(BOOK, book(7), from_cache=True)
    hub.remove(first, BOOK)
    assert subscribed(hub, second, BOOK)
    hub.publish(BOOK, book(7), from_cache=True)  # nobody holds it: not a repeat for anyone
    hub.publish(BOOK, book(7))  # now it is
    hub.publish(BOOK, book(6), from_cache=True)  # and an older one never passes
    assert second.update_ids() == [7]


def test_unversioned_cache_value_loses_to_a_live_one() -> None:
    hub = Hub()
    client = Recorder()
    subscribed(hub, client, "markets@SNAPSHOT")
    hub.publish("markets@SNAPSHOT", b'{"live":1}')
    hub.publish("markets@SNAPSHOT", b'{"cached":1}', from_cache=True)
    assert [orjson.loads(f)["data"] for _, f in client.frames] == [{"live": 1}]


def test_an_old_leaders_book_is_dropped_even_with_a_higher_update_id() -> None:
    """DESIGN §8: once epoch 5 was seen, epoch 4 is over, whatever its update ids say."""
    hub = Hub()
    client = Recorder()
    subscribed(hub, client, BOOK)
    hub.publish(BOOK, book(100, epoch=4, seq=1))
    hub.publish(BOOK, book(101, epoch=5, seq=1))  # the new leader's first book
    hub.publish(BOOK, book(150, epoch=4, seq=2))  # the old leader's queue, after the heal
    hub.publish(BOOK, book(102, epoch=5, seq=2))
    assert client.update_ids() == [100, 101, 102]


def test_the_reset_after_a_stale_run_never_lets_an_old_epoch_back_in() -> None:
    guard = OrderGuard()
    assert guard.accept(*book_stamp(book(1000, epoch=5)))
    # a long stream from the old leader: dropped, and it does not count as a reset
    for u in range(2000, 2000 + 5 * RESET_AFTER_STALE):
        assert not guard.accept(*book_stamp(book(u, epoch=4)))
    # a restarted exchange within the current term renumbers update ids: followed
    stale = [guard.accept(*book_stamp(book(u, epoch=5, seq=2))) for u in range(RESET_AFTER_STALE)]
    assert stale == [False] * (RESET_AFTER_STALE - 1) + [True]
    assert guard.accept(*book_stamp(book(RESET_AFTER_STALE, epoch=5, seq=3)))
    assert not guard.accept(*book_stamp(book(5000, epoch=4)))


def test_a_trade_of_an_old_epoch_is_dropped() -> None:
    hub = Hub()
    client = Recorder()
    subscribed(hub, client, "trades@BTCUSDT")
    for epoch, trade_id in [(1, 1), (2, 2), (1, 3), (2, 4), (None, 5)]:
        stamp = {} if epoch is None else {"epoch": epoch}
        hub.publish("trades@BTCUSDT", orjson.dumps({"e": "trade", "t": trade_id} | stamp))
    assert [orjson.loads(f)["data"]["t"] for _, f in client.frames] == [1, 2, 4, 5]


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 3), st.integers(0, 50)), max_size=80))
def test_guard_output_only_rises_until_a_long_stale_run_resets_it_never_back_in_epoch(
    versions: list[tuple[int, int, int]],
) -> None:
    guard = OrderGuard()
    accepted: list[tuple[int, ...]] = []
    newest_epoch, stale_run = 0, 0
    for u, epoch, seq in versions:
        stamp = book_stamp(book(u, epoch, seq))
        if guard.accept(*stamp):
            version = stamp[1]
            assert version is not None
            assert epoch >= newest_epoch  # never a message of an epoch older than one seen
            if accepted and version <= accepted[-1]:
                assert stale_run == RESET_AFTER_STALE - 1
            accepted.append(version)
            stale_run = 0
        elif epoch >= newest_epoch:
            stale_run += 1
        newest_epoch = max(newest_epoch, epoch)


class Behind(Recorder):
    """A subscriber that, while behind, holds a place for a latest-value topic instead."""

    def __init__(self) -> None:
        super().__init__()
        self.behind = False
        self.offered = 0  # deliver calls

    def deliver(self, topic: str, frame: bytes, how: Conflation) -> bool:
        self.offered += 1
        if self.behind and how is Conflation.REPLACE:
            return True
        return super().deliver(topic, frame, how)


def test_a_client_holding_a_place_costs_the_fan_out_nothing_and_takes_the_newest() -> None:
    hub = Hub()
    slow = Behind()
    subscribed(hub, slow, BOOK)
    slow.behind = True
    for u in range(1, 101):
        hub.publish(BOOK, book(u))
    assert slow.offered == 1  # once: it held a place, then it was skipped
    frame = hub.unpark(slow, BOOK)  # its writer comes to the place
    assert frame is not None and orjson.loads(frame)["data"]["lastUpdateId"] == 100
    assert hub.unpark(slow, BOOK) is None  # taken: it is delivered to again
    slow.behind = False
    hub.publish(BOOK, book(101))
    assert slow.update_ids() == [101]


def test_a_parked_subscriber_keeps_its_topic_wanted_and_leaves_cleanly() -> None:
    hub = Hub()
    slow = Behind()
    subscribed(hub, slow, BOOK)
    slow.behind = True
    hub.publish(BOOK, book(1))
    while hub.take_changed() is not None:
        pass
    assert hub.wanted(BOOK)
    hub.remove(slow, BOOK)
    assert not hub.wanted(BOOK) and hub.take_changed() == BOOK
    assert hub.unpark(slow, BOOK) is None


@given(st.lists(st.sampled_from(["publish", "fall behind", "take", "catch up"]), max_size=60))
def test_whatever_a_slow_subscriber_does_it_never_goes_back_and_ends_with_the_newest(
    steps: list[str],
) -> None:
    hub = Hub()
    slow = Behind()
    subscribed(hub, slow, BOOK)
    newest = 0

    def take() -> None:
        frame = hub.unpark(slow, BOOK)
        if frame is not None:
            slow.frames.append((BOOK, frame))  # what its writer sends, in its turn

    for step in steps:
        if step == "publish":
            newest += 1
            hub.publish(BOOK, book(newest))
        elif step == "fall behind":
            slow.behind = True
        elif step == "take":
            take()
        else:
            slow.behind = False
    slow.behind = False
    take()
    seen = slow.update_ids()
    assert seen == sorted(set(seen))  # never an older book after a newer one, never twice
    assert seen[-1:] == ([newest] if newest else [])  # and it ends with the newest

"""Fan-out: who wants which topic, the newest value of each, one frame per message for all.

Pure and synchronous. The shell tells the hub when a client joins or leaves a topic and
hands it every message (live from NATS, or the cached value from Redis); the hub builds the
frame once, passes it through the topic's ordering guard and gives the same bytes to every
subscriber.

A subscriber that is behind may answer a latest-value frame by holding a place for the topic
instead (``deliver`` returns True): the hub then skips it for that topic, at no cost per
message, until its writer comes to the place and takes the topic's newest frame (``unpark``).
A slow client's conflation thus costs the fan-out nothing.

Joining has two steps, because a client may only be told "subscribed" once the topic's NATS
subscription is in place: ``join`` registers the client's interest at once (the topic is
wanted from that moment, so another client leaving meanwhile cannot make it unwanted), and
``serve`` starts delivering to it once the shell has the subscription. The hub notes every
topic whose wanted state flipped; the shell takes them (``take_changed``) and opens or closes
NATS subscriptions until none is left, so the two can only disagree while the shell is
still at it.

A ``depth@`` topic (DESIGN §10) keeps its symbol's book (``DepthTopic``): its frames are the
deltas that extend the chain, a snapshot when the chain restarts, and for a subscriber that
joins or takes a place it held (it was behind) a fresh snapshot of the book at the chain's
head, so what each subscriber receives always chains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from marketpipe.gateway.depth import DepthTopic
from marketpipe.gateway.ordering import OrderGuard, StampOf, stamp_reader
from marketpipe.gateway.protocol import (
    Conflation,
    conflation_of,
    data_frame,
    frame_prefix,
    sends_latest_on_subscribe,
)


class Subscriber(Protocol):
    def deliver(self, topic: str, frame: bytes, how: Conflation) -> bool:
        """True: instead of the frame, it holds a place for the topic's newest one (only for a
        latest-value topic) and takes it with ``Hub.unpark``."""
        ...


@dataclass(slots=True)
class _Topic:
    name: str
    prefix: bytes
    how: Conflation
    stamp_of: StampOf | None
    guard: OrderGuard = field(default_factory=OrderGuard)
    latest: bytes | None = None
    subscribers: dict[Subscriber, None] = field(default_factory=dict)  # served
    joining: dict[Subscriber, None] = field(default_factory=dict)  # waiting for upstream
    parked: dict[Subscriber, None] = field(default_factory=dict)  # holding a place for latest
    depth: DepthTopic | None = None  # depth@ topics only

    @property
    def wanted(self) -> bool:
        return bool(self.subscribers or self.joining or self.parked)

    def deliver(self, subscriber: Subscriber, frame: bytes) -> None:
        if subscriber.deliver(self.name, frame, self.how) and subscriber in self.subscribers:
            del self.subscribers[subscriber]
            self.parked[subscriber] = None


class Hub:
    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}
        self._changed: dict[str, None] = {}  # topics whose wanted state flipped, in order

    def _state(self, topic: str) -> _Topic:
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic(
                topic, frame_prefix(topic), conflation_of(topic), stamp_reader(topic)
            )
            if state.how is Conflation.SNAPSHOT:
                state.depth = DepthTopic(topic)
        return state

    def wanted(self, topic: str) -> bool:
        state = self._topics.get(topic)
        return state is not None and state.wanted

    @property
    def has_changes(self) -> bool:
        return bool(self._changed)

    def take_changed(self) -> str | None:
        """The next topic whose wanted state flipped since it was last taken, or None."""
        if not self._changed:
            return None
        topic = next(iter(self._changed))
        del self._changed[topic]
        return topic

    def mark_changed(self, topic: str) -> None:
        """Ask for ``topic`` to be looked at again (its NATS subscription could not be changed)."""
        self._changed[topic] = None

    def join(self, subscriber: Subscriber, topic: str) -> None:
        """Register interest: the topic is wanted from now on; nothing is delivered yet."""
        state = self._state(topic)
        if subscriber in state.subscribers or subscriber in state.joining:
            return
        if not state.wanted:
            self._changed[topic] = None
        state.joining[subscriber] = None

    def serve(self, subscriber: Subscriber, topic: str) -> bool:
        """Start delivering to a joined subscriber, the newest value at once; True if that value
        must be read from the cache. False (and nothing happens) if it left meanwhile."""
        state = self._topics.get(topic)
        if state is None or subscriber not in state.joining:
            return False
        del state.joining[subscriber]
        state.subscribers[subscriber] = None
        if state.depth is not None:
            snapshot = state.depth.snapshot()
            if snapshot is not None:
                state.deliver(subscriber, snapshot)
            return state.depth.waiting
        if state.latest is not None:
            state.deliver(subscriber, state.latest)
        return state.latest is None and sends_latest_on_subscribe(topic)

    def unpark(self, subscriber: Subscriber, topic: str) -> bytes | None:
        """A subscriber takes the place it held: the topic's newest frame (None if it left the
        topic meanwhile), and it is delivered to again from now on."""
        state = self._topics.get(topic)
        if state is None or subscriber not in state.parked:
            return None
        del state.parked[subscriber]
        state.subscribers[subscriber] = None
        return state.depth.snapshot() if state.depth is not None else state.latest

    def remove(self, subscriber: Subscriber, topic: str) -> None:
        """Leave ``topic`` (joined or served); a no-op if not there."""
        state = self._topics.get(topic)
        if state is None:
            return
        for group in (state.subscribers, state.joining, state.parked):
            if subscriber in group:
                del group[subscriber]
                break
        else:
            return
        if not state.wanted:
            self._changed[topic] = None
            # nothing arrives once the subscription closes; the guard stays, so a later
            # subscriber never goes back in time
            state.latest = None
            if state.depth is not None:  # and a chain ends with its subscription
                state.depth = DepthTopic(topic)

    # --- depth@ (DESIGN §10) ---

    def depth_waiting(self, topic: str) -> bool:
        """``topic`` is wanted and its chain waits for a full view."""
        state = self._topics.get(topic)
        return bool(state and state.wanted and state.depth and state.depth.waiting)

    def publish_depth(self, topic: str, payload: bytes, is_delta: bool) -> int:
        """A full view (``orderbook.<SYMBOL>`` or Redis) or a delta for a ``depth@`` topic;
        returns how many subscribers got a frame. Raises ``BadDepthMessage``."""
        state = self._topics.get(topic)
        if state is None or state.depth is None or not state.wanted:
            return 0
        depth = state.depth
        frame = depth.on_delta(payload) if is_delta else depth.on_view(payload)
        if frame is None:
            return 0
        subscribers = list(state.subscribers)  # a delivery may park its subscriber
        for subscriber in subscribers:
            state.deliver(subscriber, frame)
        return len(subscribers)

    def publish(self, topic: str, payload: bytes, from_cache: bool = False) -> int:
        """Fan one message out; returns how many subscribers got it (0 if stale or unwanted)."""
        state = self._topics.get(topic)
        if state is None or not state.wanted:
            return 0
        epoch, version = state.stamp_of(payload) if state.stamp_of is not None else (None, None)
        if version is None and from_cache and state.latest is not None:
            # unversioned: a live value that arrived while the cache was read is newer
            return 0
        # with no latest value, no subscriber has this topic's last accepted state yet
        if not state.guard.accept(epoch, version, repeat_ok=state.latest is None):
            return 0
        frame = data_frame(state.prefix, payload)
        if state.how is Conflation.REPLACE:
            state.latest = frame
        # a copy: a delivery may park its subscriber or disconnect a slow client
        subscribers = list(state.subscribers)
        for subscriber in subscribers:
            state.deliver(subscriber, frame)
        return len(subscribers)

"""Fan-out: who wants which topic, the newest value of each, one frame per message for all.

Pure and synchronous. The shell tells the hub when a client joins or leaves a topic and
hands it every message (live from NATS, or the cached value from Redis); the hub builds the
frame once, passes it through the topic's ordering guard and gives the same bytes to every
subscriber. ``wanted`` tells the shell which topics need a NATS subscription.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from marketpipe.gateway.ordering import OrderGuard, VersionOf, version_reader
from marketpipe.gateway.protocol import (
    Conflation,
    conflation_of,
    data_frame,
    frame_prefix,
    sends_latest_on_subscribe,
)


class Subscriber(Protocol):
    def deliver(self, topic: str, frame: bytes, how: Conflation) -> None: ...


@dataclass(slots=True)
class _Topic:
    name: str
    prefix: bytes
    how: Conflation
    version_of: VersionOf | None
    guard: OrderGuard = field(default_factory=OrderGuard)
    latest: bytes | None = None
    subscribers: dict[Subscriber, None] = field(default_factory=dict)


class Hub:
    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}

    def _state(self, topic: str) -> _Topic:
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic(
                topic, frame_prefix(topic), conflation_of(topic), version_reader(topic)
            )
        return state

    @property
    def active_topics(self) -> int:
        return sum(1 for state in self._topics.values() if state.subscribers)

    def subscriber_count(self, topic: str) -> int:
        state = self._topics.get(topic)
        return len(state.subscribers) if state is not None else 0

    def wanted(self, topic: str) -> bool:
        return self.subscriber_count(topic) > 0

    def add(self, subscriber: Subscriber, topic: str) -> bool:
        """Join and get the newest value at once; True if it must be read from the cache."""
        state = self._state(topic)
        state.subscribers[subscriber] = None
        if state.latest is not None:
            subscriber.deliver(topic, state.latest, state.how)
        return state.latest is None and sends_latest_on_subscribe(topic)

    def remove(self, subscriber: Subscriber, topic: str) -> bool:
        """True when that was the last subscriber."""
        state = self._topics.get(topic)
        if state is None or subscriber not in state.subscribers:
            return False
        del state.subscribers[subscriber]
        if state.subscribers:
            return False
        # the guard stays: a later resubscription must not go back in time
        state.latest = None
        return True

    def publish(self, topic: str, payload: bytes, from_cache: bool = False) -> int:
        """Fan one message out; returns how many subscribers got it (0 if stale or unwanted)."""
        state = self._topics.get(topic)
        if state is None or not state.subscribers:
            return 0
        if state.version_of is not None:
            if not state.guard.accept(state.version_of(payload)):
                return 0
        elif from_cache and state.latest is not None:
            # unversioned: a live value that arrived while the cache was read is newer
            return 0
        frame = data_frame(state.prefix, payload)
        if state.how is Conflation.REPLACE:
            state.latest = frame
        subscribers = list(state.subscribers)  # a delivery may disconnect a slow client
        for subscriber in subscribers:
            subscriber.deliver(topic, frame, state.how)
        return len(subscribers)

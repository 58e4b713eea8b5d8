"""A client's bounded send queue: latest-value topics conflate, a client too far behind is cut.

Frames wait here until the client's writer takes them. A newer frame of a latest-value topic
replaces the older unsent one in place (it keeps the older one's turn, so a busy topic is not
starved); ``markets@DATA`` deltas merge; everything else queues. When more than ``bound``
frames wait, the queue overflows: it refuses everything after, and the owner disconnects the
client (1013). Pure: no I/O, no clock.
"""

from __future__ import annotations

import itertools
from enum import Enum

from marketpipe.gateway.protocol import Conflation, merge_data_frames


class Pushed(Enum):
    QUEUED = "queued"
    CONFLATED = "conflated"  # replaced or merged an older unsent frame
    OVERFLOW = "overflow"  # the bound was passed: the client must go
    REFUSED = "refused"  # already overflowed


class SendQueue:
    __slots__ = ("_frames", "_ids", "bound", "overflowed")

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._frames: dict[object, bytes] = {}
        self._ids = itertools.count()
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._frames)

    def push(
        self, frame: bytes, topic: str | None = None, how: Conflation = Conflation.NONE
    ) -> Pushed:
        if self.overflowed:
            return Pushed.REFUSED
        if how is not Conflation.NONE and topic is not None:
            older = self._frames.get(topic)
            if older is not None:
                self._frames[topic] = (
                    merge_data_frames(older, frame) if how is Conflation.MERGE else frame
                )
                return Pushed.CONFLATED
            self._frames[topic] = frame
        else:
            self._frames[next(self._ids)] = frame
        if len(self._frames) > self.bound:
            self.overflowed = True
            return Pushed.OVERFLOW
        return Pushed.QUEUED

    def discard(self, topic: str) -> bool:
        """Forget an unsent latest-value frame (the client unsubscribed from its topic)."""
        return self._frames.pop(topic, None) is not None

    def take_all(self) -> list[bytes]:
        frames = list(self._frames.values())
        self._frames.clear()
        return frames

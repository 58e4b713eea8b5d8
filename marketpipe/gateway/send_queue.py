"""A client's send queue, bounded in bytes: latest-value topics conflate, a client holding too
much is cut.

Frames wait here while the client's socket holds more than it has taken. Queueing costs O(1)
whatever the frame (it is the shared frame of a fan-out, never copied): a newer frame of a
latest-value topic replaces the older unsent one in place (keeping the older one's turn, so a
busy topic is not starved); a ``markets@DATA`` delta joins the unsent ones of its topic, and
they are merged into one frame only when the writer takes them (``pop``), so the merging is
paid by the slow client's writer, never by the fan-out; a ``depth@`` frame that finds an
older one of its topic unsent turns that place into a held one (below): a chain must not lose
a delta, so the client takes one fresh snapshot there instead of its unsent deltas (DESIGN
§10); everything else queues.

A client that is behind does not even take a latest-value topic's frames: it ``hold``s a place
for the topic, and its writer reads the topic's newest frame when it comes to that place
(``pop`` gives the topic without a frame). Until then the fan-out skips the client for that
topic altogether (see ``Hub``).

The bound is judged when a frame arrives: if the client already holds more than ``max_bytes``
(queued here plus ``unsent`` in its socket's buffer), the queue overflows, refuses everything
after, and the owner disconnects the client (1013). A client thus never holds more than
``max_bytes`` plus one frame. Each queued frame is charged ``ENTRY_COST`` on top of its
length: the queue's own bookkeeping, which for small frames (trades) is as large as the frame
and, unlike the frame, belongs to this client alone; a held place is charged the length of
the topic's frame when it was held. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from marketpipe.gateway.protocol import Conflation, merge_data_frames

# bytes of bookkeeping per queued frame (its entry, the entry's list, the deque's slot)
ENTRY_COST = 160


class Pushed(Enum):
    QUEUED = "queued"
    CONFLATED = "conflated"  # replaced or joined an older unsent frame of its topic
    OVERFLOW = "overflow"  # the client holds more than the bound: it must go
    REFUSED = "refused"  # already overflowed


class _Entry:
    """One place in the queue: one frame, or for a merging topic the deltas to merge, or for a
    held latest-value topic no frame at all (read when the place is taken)."""

    __slots__ = ("frames", "live", "size", "topic")

    def __init__(self, frames: list[bytes], topic: str | None, size: int) -> None:
        self.frames = frames
        self.topic = topic
        self.size = size  # what it is charged: its frames and its bookkeeping
        self.live = True  # False once discarded: its place in the deque is skipped


# what ``pop`` gives: (topic, frame); no frame: the topic's newest frame is to be read now
Taken = tuple[str | None, bytes | None]


class SendQueue:
    __slots__ = ("_entries", "_keyed", "_live", "bytes", "conflated", "max_bytes", "overflowed")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0  # charged for every frame queued, merged or not
        self.overflowed = False
        # frames replaced by newer ones since the owner last looked (it counts them in its
        # metric when it writes, not on the fan-out path)
        self.conflated = 0
        self._entries: deque[_Entry] = deque()
        self._keyed: dict[str, _Entry] = {}  # latest-value topic -> its entry in the queue
        self._live = 0  # entries that still hold frames

    def __len__(self) -> int:
        """Frames the client would get if it read everything now."""
        return self._live

    def push(
        self,
        frame: bytes,
        topic: str | None = None,
        how: Conflation = Conflation.NONE,
        unsent: int = 0,
    ) -> Pushed:
        """Queue ``frame``; ``unsent``: bytes the client's socket buffer still holds."""
        if self.overflowed:
            return Pushed.REFUSED
        if self.bytes + unsent > self.max_bytes:
            self.overflowed = True
            return Pushed.OVERFLOW
        size = len(frame) + ENTRY_COST
        if how is not Conflation.NONE and topic is not None:
            entry = self._keyed.get(topic)
            if entry is not None:
                if how is Conflation.MERGE:
                    entry.frames.append(frame)
                    entry.size += size
                    self.bytes += size
                elif how is Conflation.SNAPSHOT:  # held: a snapshot is read when it is taken
                    entry.frames = []
                    self.bytes += size - entry.size
                    entry.size = size
                else:
                    entry.frames = [frame]
                    self.bytes += size - entry.size
                    entry.size = size
                self.conflated += 1
                return Pushed.CONFLATED
            return self._append(_Entry([frame], topic, size), topic)
        return self._append(_Entry([frame], None, size), None)

    def hold(self, topic: str, size: int, unsent: int = 0) -> Pushed:
        """Keep a place for latest-value ``topic``, whose newest frame is read when the place is
        taken; ``size``: the length of its frame now, charged meanwhile."""
        if self.overflowed:
            return Pushed.REFUSED
        if self.bytes + unsent > self.max_bytes:
            self.overflowed = True
            return Pushed.OVERFLOW
        size += ENTRY_COST
        entry = self._keyed.get(topic)
        if entry is not None:  # an unsent frame of it: the place now takes the newest
            entry.frames = []
            self.bytes += size - entry.size
            entry.size = size
            self.conflated += 1
            return Pushed.CONFLATED
        return self._append(_Entry([], topic, size), topic)

    def _append(self, entry: _Entry, topic: str | None) -> Pushed:
        if topic is not None:
            self._keyed[topic] = entry
        self._entries.append(entry)
        self._live += 1
        self.bytes += entry.size
        return Pushed.QUEUED

    def pop(self) -> Taken | None:
        """The oldest waiting place: (topic, its frame; deltas of a merging topic merged into
        one), (topic, None) for a held place, or None when nothing waits."""
        while self._entries:
            entry = self._entries.popleft()
            if entry.topic is not None and self._keyed.get(entry.topic) is entry:
                del self._keyed[entry.topic]
            if not entry.live:
                continue
            self._live -= 1
            self.bytes -= entry.size
            if not entry.frames:
                return entry.topic, None
            if len(entry.frames) > 1:
                return entry.topic, merge_data_frames(entry.frames)
            return entry.topic, entry.frames[0]
        return None

    def discard(self, topic: str) -> bool:
        """Forget the unsent frame (or held place) of a latest-value topic (the client
        unsubscribed from it)."""
        entry = self._keyed.pop(topic, None)
        if entry is None:
            return False
        self._forget(entry)
        return True

    def clear(self) -> None:
        """Let go of everything (the client is being cut): nothing here will be sent."""
        for entry in self._entries:
            self._forget(entry)
        self._entries.clear()
        self._keyed.clear()

    def _forget(self, entry: _Entry) -> None:
        if entry.live:
            self._live -= 1
            self.bytes -= entry.size
            entry.live = False  # its place in the deque is skipped by pop()
            entry.frames = []
            entry.size = 0

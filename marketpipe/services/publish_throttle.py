"""Per-symbol publish pacing, pure: at most one message per interval, newest state wins.

The throttle never holds book state: it only says *which* symbols are due. The caller renders
each due symbol's book at that moment, so whatever changed last is what goes out, and a change
to a symbol that has been quiet for a whole interval is due at once (no global tick adding up to
an interval of latency to everything).

A change that arrives before its symbol's next slot (previous message + interval) waits for the
slot only if the slot is at most ``max_wait`` away. Waiting longer would set the pace for every
later change: with diffs as frequent as the interval, each one would arrive that much before
its slot too, and one late message would leave the symbol's books that much older from then on.
So a change further from its slot waits for a newer one instead, which goes out at once if it
arrives at or after the slot; if none arrives within an interval + ``max_wait``, the change goes
out then.
"""

from __future__ import annotations

import heapq
import math


class PublishThrottle:
    """Tracks, per symbol, when it last went out and whether a change is waiting."""

    def __init__(self, interval_seconds: float, max_wait_seconds: float | None = None) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        if max_wait_seconds is not None and max_wait_seconds < 0:
            raise ValueError("max_wait_seconds must not be negative")
        self.interval = interval_seconds
        # None: always wait for the slot (a change is never deferred to a newer one)
        self.max_wait = math.inf if max_wait_seconds is None else max_wait_seconds
        self._last_sent: dict[str, float] = {}
        self._pending: dict[str, float] = {}  # symbol -> time it becomes due
        self._heap: list[tuple[float, str]] = []  # may hold stale entries; _pending decides

    def changed(self, symbol: str, now: float) -> bool:
        """Note a change; True when the symbol is due right away."""
        slot = self._last_sent.get(symbol, -math.inf) + self.interval
        if now >= slot:
            due = now
        elif slot - now <= self.max_wait:
            due = slot
        else:  # unless a newer change comes at or after the slot: one interval on, usually
            due = now + self.interval + self.max_wait
        pending = self._pending.get(symbol)
        if pending is None or due < pending:
            self._pending[symbol] = due
            heapq.heappush(self._heap, (due, symbol))
        else:
            due = pending
        return due <= now

    def pop_due(self, now: float) -> list[str]:
        """Symbols whose change may go out now, earliest first; they stop being pending."""
        due: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, symbol = heapq.heappop(heap)
            if self._pending.get(symbol) == when:
                del self._pending[symbol]
                due.append(symbol)
        return due

    def sent(self, symbol: str, now: float) -> None:
        """Record that a message for ``symbol`` went out at ``now``."""
        self._last_sent[symbol] = now

    def next_due(self) -> float | None:
        """When the earliest pending symbol becomes due (None: nothing pending)."""
        heap = self._heap
        while heap and self._pending.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def discard(self, symbol: str) -> None:
        """Drop a pending change (the book left sync, so that state must never go out)."""
        self._pending.pop(symbol, None)

    def forget(self, symbol: str) -> None:
        """The symbol is no longer tracked at all."""
        self._pending.pop(symbol, None)
        self._last_sent.pop(symbol, None)

    def pending(self, symbol: str) -> bool:
        return symbol in self._pending

"""Which never-synced books may start building, pure: only as many as snapshots will soon serve.

A book buffers every diff from its first one until its snapshot arrives. Within the REST budget
the initial snapshots of 2000 pairs take many minutes, and a pair that buffered all that time
would hold thousands of diffs (gigabytes over 2000 pairs) only to throw them away: the snapshot
makes every diff older than itself useless. So a new pair's diffs are ignored until it is
*admitted*, and pairs are admitted (priority pairs first, then in arrival order) only while fewer
than ``window`` admitted pairs wait for their snapshot. Once admitted a pair stays admitted: its
later resyncs go straight to the snapshot queue, where they jump ahead of initial syncs.

A pair admitted but silent (no diff, so no snapshot request yet) stops counting against the
window after ``grace_seconds``, so quiet pairs cannot block the others.
"""

from __future__ import annotations

import heapq
import itertools


class SyncAdmission:
    def __init__(self, window: int, grace_seconds: float = 5.0) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.grace = grace_seconds
        self.admitted: set[str] = set()
        self._waiting: list[tuple[int, int, str]] = []  # (tier, order, symbol); may hold stale
        self._tier: dict[str, int] = {}  # waiting symbol -> its current tier
        self._starting: dict[str, float] = {}  # admitted, no snapshot asked yet -> since when
        self._order = itertools.count()

    def add(self, symbol: str, priority: bool) -> None:
        """A pair to build (again, with a new priority: it moves up if it deserves to)."""
        if symbol in self.admitted:
            return
        tier = 0 if priority else 1
        if self._tier.get(symbol, 2) <= tier:
            return
        self._tier[symbol] = tier
        heapq.heappush(self._waiting, (tier, next(self._order), symbol))

    def remove(self, symbol: str) -> None:
        self.admitted.discard(symbol)
        self._tier.pop(symbol, None)
        self._starting.pop(symbol, None)

    def requested(self, symbol: str) -> None:
        """The pair asked for its snapshot: the snapshot queue counts it from now on."""
        self._starting.pop(symbol, None)

    def admit(self, now: float, queued: int) -> list[str]:
        """Admit pairs while fewer than ``window`` wait (``queued`` in the snapshot queue)."""
        for symbol, since in list(self._starting.items()):
            if now - since >= self.grace:
                del self._starting[symbol]
        admitted: list[str] = []
        while self._waiting and queued + len(self._starting) < self.window:
            tier, _, symbol = heapq.heappop(self._waiting)
            if self._tier.get(symbol) != tier:
                continue  # removed, or re-added with a better tier
            del self._tier[symbol]
            self.admitted.add(symbol)
            self._starting[symbol] = now
            admitted.append(symbol)
        return admitted

    @property
    def waiting(self) -> int:
        return len(self._tier)

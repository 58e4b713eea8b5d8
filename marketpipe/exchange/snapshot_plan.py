"""Which depth snapshot to fetch next, and when: one queue for every symbol of a process.

Order: resyncs of priority pairs, then priority pairs, then resyncs of the others, then the
others; first come first served within a tier. A symbol is queued at most once (a new request
moves it up a tier if it deserves one) and a request for a symbol whose snapshot is already in
flight joins that fetch: the book's sync procedure asks again if the snapshot turns out too old.

Pacing: each fetch of weight ``w`` is followed by a gap of ``w / rate`` seconds stretched by a
random 0-20 %, where ``rate`` is the snapshot share of the weight budget per second. Snapshots
thus trickle out evenly inside the budget (the weight gate never has to hold them back) and
symbols that asked together are spread apart. With a 3000/min budget of which 80 % goes to
snapshots, limit 5000 (weight 250) allows ~9.6 snapshots/min; limit 500 (weight 25) ~96/min.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from enum import IntEnum

from marketpipe.exchange.weights import depth_weight

JITTER = 0.2


class Tier(IntEnum):
    PRIORITY_RESYNC = 0
    PRIORITY = 1
    RESYNC = 2
    INITIAL = 3


def tier_of(priority: bool, resync: bool) -> Tier:
    if priority:
        return Tier.PRIORITY_RESYNC if resync else Tier.PRIORITY
    return Tier.RESYNC if resync else Tier.INITIAL


@dataclass(frozen=True)
class SnapshotJob:
    symbol: str
    limit: int
    tier: Tier

    @property
    def weight(self) -> int:
        return depth_weight(self.limit)


@dataclass
class SnapshotPlanner:
    weight_per_minute: float
    priority_limit: int = 5000
    other_limit: int = 500
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _heap: list[tuple[int, int, str]] = field(default_factory=list, repr=False)
    _queued: dict[str, SnapshotJob] = field(default_factory=dict, repr=False)
    _order: dict[str, int] = field(default_factory=dict, repr=False)
    _in_flight: set[str] = field(default_factory=set, repr=False)
    _seq: int = 0
    _next_at: float = 0.0

    def __post_init__(self) -> None:
        if self.weight_per_minute <= 0:
            raise ValueError("snapshot pacing needs a positive weight budget")

    def request(
        self, symbol: str, *, priority: bool = False, resync: bool = False, limit: int | None = None
    ) -> bool:
        """Queue a snapshot; True when this changed the queue (new, or moved up a tier)."""
        if symbol in self._in_flight:
            return False
        tier = tier_of(priority, resync)
        chosen = limit or (self.priority_limit if priority else self.other_limit)
        queued = self._queued.get(symbol)
        if queued is not None and queued.tier <= tier:
            return False
        if queued is not None:  # moving up keeps the larger of the two limits
            chosen = max(chosen, queued.limit)
        self._seq += 1
        self._queued[symbol] = SnapshotJob(symbol, chosen, tier)
        self._order[symbol] = self._seq
        heapq.heappush(self._heap, (tier, self._seq, symbol))
        return True

    def cancel(self, symbol: str) -> None:
        """Forget a queued request (the pair left the universe); heap entries expire lazily."""
        self._queued.pop(symbol, None)
        self._order.pop(symbol, None)

    @property
    def pending(self) -> int:
        return len(self._queued)

    def is_in_flight(self, symbol: str) -> bool:
        return symbol in self._in_flight

    def due_in(self, now: float) -> float | None:
        """Seconds until the next fetch may start; None when nothing is queued."""
        if not self._queued:
            return None
        return max(0.0, self._next_at - now)

    def pop(self, now: float) -> SnapshotJob | None:
        """The next job if one is due now; it counts as in flight until ``finished``."""
        if self.due_in(now) != 0.0:
            return None
        while self._heap:
            _tier, seq, symbol = heapq.heappop(self._heap)
            if self._order.get(symbol) != seq:
                continue  # superseded by a later request or cancelled
            job = self._queued.pop(symbol)
            del self._order[symbol]
            self._in_flight.add(symbol)
            gap = job.weight * 60.0 / self.weight_per_minute
            self._next_at = now + gap * (1.0 + self.rng.uniform(0.0, JITTER))
            return job
        return None

    def finished(self, symbol: str) -> None:
        self._in_flight.discard(symbol)

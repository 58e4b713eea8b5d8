"""Which depth snapshot to fetch next, and when: one queue for every symbol of a process.

Order: resyncs of priority pairs, then priority pairs, then resyncs of the others, then the
others; first come first served within a tier. A symbol is queued at most once (a new request
moves it up a tier if it deserves one) and a request for a symbol whose snapshot is already in
flight joins that fetch: the book's sync procedure asks again if the snapshot turns out too old.

Pacing: the planner holds a :class:`WeightGate` of the snapshot share of the budget
(``weight_per_minute``) and peeks at the process's own gate (``ip_gate``: the REST client's,
which also knows the IP's ``X-MBX-USED-WEIGHT-1M`` and any ``Retry-After``). The next job goes
as soon as both would let its weight through, so an idle budget is spent at once: after a mass
disconnect every book asks together and all of them that fit in the budget are fetched in one
burst, priority pairs first; the rest follow as the spent weight leaves the 60 s window. The
head of the queue waits for its weight rather than let lighter jobs behind it pass.

Limits (:func:`snapshot_limit`): the smallest of the exchange's weight steps that covers twice
the pair's view ``Depth``, unless a limit is configured (as 5000 for the exact full book). With
the default budget (6000/min, a 0.5 share, 80 % of it for snapshots: 2400/min) a limit-100
snapshot weighs 5, so 480 books resync in one burst and 480 more each minute.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from enum import IntEnum

from marketpipe.exchange.weights import WeightGate, depth_weight

# The exchange's weight steps (binance-spot.md §1.2): a limit between two costs the higher one.
WEIGHT_STEPS = (100, 500, 1000, 5000)
DEEPEST = WEIGHT_STEPS[-1]  # deeper requests get this many levels


def snapshot_limit(configured: int, depth: int) -> int:
    """The limit to ask a pair's snapshot with, for a view of ``depth`` levels.

    The book needs a window deeper than its view, or the first levels to go at the top leave
    it short (and it resyncs again and again): twice ``depth``. ``configured`` 0 is automatic:
    the smallest weight step that covers that. A configured limit is kept (raised to twice
    ``depth`` when below it); the exchange gives at most ``DEEPEST`` levels."""
    need = 2 * depth
    if configured > 0:
        return min(DEEPEST, max(configured, need))
    return next((step for step in WEIGHT_STEPS if step >= need), DEEPEST)


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
    ip_gate: WeightGate | None = None
    gate: WeightGate = field(init=False, repr=False)
    _heap: list[tuple[int, int, str]] = field(default_factory=list, repr=False)
    _queued: dict[str, SnapshotJob] = field(default_factory=dict, repr=False)
    _order: dict[str, int] = field(default_factory=dict, repr=False)
    _in_flight: set[str] = field(default_factory=set, repr=False)
    _seq: int = 0

    def __post_init__(self) -> None:
        if self.weight_per_minute < 1:
            raise ValueError("snapshot pacing needs a positive weight budget")
        self.gate = WeightGate(limit=int(self.weight_per_minute), share=1.0)

    def request(
        self, symbol: str, *, limit: int, priority: bool = False, resync: bool = False
    ) -> bool:
        """Queue a snapshot; True when this changed the queue (new, or moved up a tier)."""
        if symbol in self._in_flight:
            return False
        tier = tier_of(priority, resync)
        queued = self._queued.get(symbol)
        if queued is not None and queued.tier <= tier:
            return False
        if queued is not None:  # moving up keeps the larger of the two limits
            limit = max(limit, queued.limit)
        self._seq += 1
        self._queued[symbol] = SnapshotJob(symbol, limit, tier)
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
        job = self._head()
        if job is None:
            return None
        wait = self.gate.wait_for(job.weight, now)
        if self.ip_gate is not None:
            wait = max(wait, self.ip_gate.wait_for(job.weight, now))
        return wait

    def pop(self, now: float) -> SnapshotJob | None:
        """The next job if one is due now; it counts as in flight until ``finished``. Its weight
        is spent from the snapshot share here (the REST client spends it from ``ip_gate``)."""
        if self.due_in(now) != 0.0:
            return None
        _tier, _seq, symbol = heapq.heappop(self._heap)
        job = self._queued.pop(symbol)
        del self._order[symbol]
        self._in_flight.add(symbol)
        self.gate.try_acquire(job.weight, now)
        return job

    def finished(self, symbol: str) -> None:
        self._in_flight.discard(symbol)

    def _head(self) -> SnapshotJob | None:
        """The job to go next, dropping heap entries superseded or cancelled."""
        heap = self._heap
        while heap:
            _tier, seq, symbol = heap[0]
            if self._order.get(symbol) == seq:
                return self._queued[symbol]
            heapq.heappop(heap)
        return None

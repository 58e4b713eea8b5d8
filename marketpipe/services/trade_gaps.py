"""Per-pair continuity of trade ids: no hole, no duplicate, always in order (pure, no I/O).

Binance trade ids rise by one per pair, so the stream itself tells when trades were missed
(a jump in ``t``). A :class:`TradeSequencer` keeps, for one pair, the last id published; a jump
holds that pair's live trades and asks for the missing ones from REST ``/api/v3/trades``
(:class:`FetchMissing`); the fetched rows and the held trades are then released in id order.

After a reconnect the stream may stay quiet on a pair that traded meanwhile, so the pair is
marked *suspect* and a low-priority check fetch is asked for; a live trade arriving first settles
the question for free (its id either continues the sequence or opens a gap fetch).

REST ``trades`` only returns the most recent ``limit`` (at most 1000) trades, so a hole older
than that cannot be filled: it is given up, reported in :attr:`Step.skipped`, and the sequence
goes on from the oldest trade still available. A fetch that does not reach the held trades (a
lagging REST view) is retried a few times before the hole is given up the same way; a fetch
that failed (REST unreachable, refused, rate-limited) proves nothing about the hole: it is
retried, ever more slowly (:attr:`FetchMissing.attempt`), for as long as it fails;
if REST, reaching back far enough, still never showed the held ids, those live trades carried
impossible ids (a bad frame): they are dropped (:attr:`Step.rejected`) rather than let one bogus
id swallow every later trade as a "duplicate".

:class:`FetchQueue` orders the fetches of all pairs: gap fills before reconnect checks, one
request per pair at a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P")

MAX_TRADES_LIMIT = 1000  # REST /api/v3/trades caps `limit` at 1000
LIMIT_SLACK = 100  # trades that may happen between asking and the exchange answering


@dataclass(frozen=True, slots=True)
class FetchMissing:
    """Fetch recent trades of ``symbol``: ``gap`` (a known hole) or ``check`` (after reconnect)."""

    symbol: str
    reason: str
    attempt: int = 0  # retries of the same hole: the caller waits a little longer each time


@dataclass(slots=True)
class Step(Generic[P]):
    """What to do after an input: publish ``publish`` in order, maybe ``fetch``."""

    publish: list[P] = field(default_factory=list)
    fetch: FetchMissing | None = None
    duplicates: int = 0
    skipped: int = 0  # trade ids given up on (no longer available from REST)
    rejected: int = 0  # held live trades whose ids REST never confirmed


class TradeSequencer(Generic[P]):
    """One pair's trade-id continuity; ``P`` is the caller's payload for a trade (e.g. bytes)."""

    def __init__(self, symbol: str, *, max_held: int = 20_000, max_attempts: int = 3) -> None:
        self.symbol = symbol
        self.last_id: int | None = None
        self.filling = False  # a gap fetch is wanted or in flight: live trades are held
        self.suspect = (
            False  # the stream dropped; a check fetch is wanted unless a trade settles it
        )
        self.down = True  # until the pair's stream is first up
        self._held: dict[int, P] = {}
        self._newest_seen: int | None = None
        self._attempts = 0
        self._wide = False  # the last fetch did not reach back: use the widest window
        self._rest_newest: int | None = None  # newest id of the last fetch that reached back
        self._failures = 0  # fetches in a row that got no answer
        self._max_held = max_held
        self._max_attempts = max_attempts

    @property
    def held(self) -> int:
        return len(self._held)

    def on_live(self, trade_id: int, payload: P) -> Step[P]:
        """A trade from the stream."""
        self._note_seen(trade_id)
        step: Step[P] = Step()
        if self.last_id is None:
            self.last_id = trade_id
            step.publish.append(payload)
            return step
        if trade_id <= self.last_id or trade_id in self._held:
            step.duplicates = 1
            return step
        if self.filling:
            self._held[trade_id] = payload
            if len(self._held) > self._max_held:
                self._give_up(step)
            return step
        self.suspect = False
        if trade_id == self.last_id + 1:
            self.last_id = trade_id
            step.publish.append(payload)
            return step
        self._held[trade_id] = payload
        self._start_fill(step)
        return step

    def on_streams_down(self) -> None:
        self.down = True
        self.suspect = self.last_id is not None

    def on_streams_up(self) -> FetchMissing | None:
        """The stream is back: ask for a check unless a gap fetch is already under way."""
        self.down = False
        if self.suspect and not self.filling:
            return FetchMissing(self.symbol, "check")
        return None

    def fetch_limit(self) -> int:
        """The REST ``limit`` for the next fetch: enough to reach back to ``last_id``."""
        if self._wide or self.last_id is None or self._newest_seen is None:
            return MAX_TRADES_LIMIT
        wanted = self._newest_seen - self.last_id + LIMIT_SLACK
        return max(1, min(MAX_TRADES_LIMIT, wanted))

    def on_fetched(self, rows: Iterable[tuple[int, P]], limit: int) -> Step[P]:
        """REST rows (id, payload), oldest first, fetched with ``limit``."""
        step: Step[P] = Step()
        self._failures = 0
        rows = list(rows)
        if self.last_id is None:  # nothing published yet: nothing can be missing
            self._reset_fill()
            return step
        for trade_id, payload in rows:
            self._note_seen(trade_id)
            if trade_id > self.last_id:
                self._held.setdefault(trade_id, payload)
        self._release_contiguous(step)
        self.suspect = self.suspect and self.down
        if not self._held:
            self._reset_fill()
            return step
        first_id = rows[0][0] if rows else None
        if first_id is not None and first_id > self.last_id + 1 and len(rows) >= limit:
            if limit < MAX_TRADES_LIMIT:
                self._wide = True  # too narrow a window: widen it (same weight)
                self._ask(step)
            else:
                self._give_up(step)  # older than anything REST still serves
            return step
        self._rest_newest = rows[-1][0] if rows else self.last_id
        self._retry(step)
        return step

    def on_fetch_failed(self) -> Step[P]:
        """The fetch got no answer: ask again (later each time) without giving anything up."""
        step: Step[P] = Step()
        self._rest_newest = None
        self._failures += 1
        if self._held:
            self.filling = True
            step.fetch = FetchMissing(self.symbol, "gap", self._failures)
        elif self.suspect:
            step.fetch = FetchMissing(self.symbol, "check", self._failures)
        else:
            self._reset_fill()
        return step

    def resume_after(self, published: int | None, recent: Iterable[tuple[int, P]]) -> Step[P]:
        """This instance becomes the publisher: ``published`` is the last id the previous one
        published (None: none of ``recent``), ``recent`` what this sequencer released lately
        (id, payload), oldest first. Republishes what the previous publisher had not; when
        ``recent`` no longer reaches back that far, the hole is fetched like any other."""
        step: Step[P] = Step()
        recent = list(recent)
        if published is None:
            step.publish = [payload for _, payload in recent]
            return step
        if self.last_id is None or published >= self.last_id:  # it was level or ahead
            self.last_id = published if self.last_id is None else max(self.last_id, published)
            for trade_id in [t for t in self._held if t <= self.last_id]:
                del self._held[trade_id]
            self._release_contiguous(step)
            return step
        missed = [(trade_id, payload) for trade_id, payload in recent if trade_id > published]
        if recent and recent[0][0] <= published + 1:
            step.publish = [payload for _, payload in missed]
            return step
        self.last_id = published
        for trade_id, payload in missed:
            self._held.setdefault(trade_id, payload)
        if not self.filling:
            self._start_fill(step)
        return step

    def _note_seen(self, trade_id: int) -> None:
        if self._newest_seen is None or trade_id > self._newest_seen:
            self._newest_seen = trade_id

    def _start_fill(self, step: Step[P]) -> None:
        self._reset_fill()
        self.filling = True
        step.fetch = FetchMissing(self.symbol, "gap")

    def _ask(self, step: Step[P]) -> None:
        self.filling = True
        step.fetch = FetchMissing(self.symbol, "gap", self._attempts)

    def _retry(self, step: Step[P]) -> None:
        self._attempts += 1
        if self._attempts < self._max_attempts:
            self._ask(step)
        else:
            self._give_up(step)

    def _release_contiguous(self, step: Step[P]) -> None:
        assert self.last_id is not None
        while self._held:
            payload = self._held.pop(self.last_id + 1, None)
            if payload is None:
                return
            self.last_id += 1
            step.publish.append(payload)

    def _give_up(self, step: Step[P]) -> None:
        """Skip every hole: release the held trades in order, minus those REST proved bogus."""
        assert self.last_id is not None
        if self._rest_newest is not None:
            bogus = [t for t in self._held if t > self._rest_newest]
            step.rejected += len(bogus)
            for trade_id in bogus:
                del self._held[trade_id]
        for trade_id in sorted(self._held):
            step.skipped += trade_id - self.last_id - 1
            step.publish.append(self._held[trade_id])
            self.last_id = trade_id
        self._held.clear()
        self._reset_fill()

    def _reset_fill(self) -> None:
        self.filling = False
        self._attempts = 0
        self._wide = False
        self._rest_newest = None


class FetchQueue:
    """Pairs waiting for a REST trades fetch: gap fills, then reconnect checks; one per pair."""

    def __init__(self) -> None:
        self._urgent: deque[str] = deque()
        self._later: deque[str] = deque()
        self._queued: dict[str, str] = {}
        self._in_flight: set[str] = set()

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, fetch: FetchMissing) -> None:
        """Queue ``fetch`` unless already queued or in flight (a gap upgrades a queued check)."""
        current = self._queued.get(fetch.symbol)
        if current == "gap" or (current == "check" and fetch.reason == "check"):
            return
        if fetch.symbol in self._in_flight and fetch.reason == "check":
            return
        self._queued[fetch.symbol] = fetch.reason
        (self._urgent if fetch.reason == "gap" else self._later).append(fetch.symbol)

    def discard(self, symbol: str) -> None:
        self._queued.pop(symbol, None)

    def take(self) -> FetchMissing | None:
        """The next fetch to run, skipping pairs in flight (they come back once finished)."""
        for lane, reason in ((self._urgent, "gap"), (self._later, "check")):
            for _ in range(len(lane)):
                symbol = lane.popleft()
                if self._queued.get(symbol) != reason:
                    continue  # discarded or upgraded to the urgent lane
                if symbol in self._in_flight:
                    lane.append(symbol)
                    continue
                del self._queued[symbol]
                self._in_flight.add(symbol)
                return FetchMissing(symbol, reason)
        return None

    def done(self, symbol: str) -> None:
        self._in_flight.discard(symbol)

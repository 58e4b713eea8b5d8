"""Which quiet books to verify, and which are stale, pure: a silent stream is checked, not trusted.

A pair's diff stream can stop while its connection stays alive (pings answered, other streams
flowing): the link looks healthy and the book stays ``live`` at an old update id. So a pair with
no diff for ``quiet_seconds`` is *checked*: the shell fetches a cheap snapshot (``CHECK_LIMIT``
levels, weight 5) and reports its ``lastUpdateId``:

- at or behind the last diff seen: the pair is genuinely quiet (a halted market); its next check
  waits twice as long, up to ``MAX_BACKOFF`` times the quiet time;
- beyond it: the exchange moved on. Diffs on their way get ``grace_seconds`` to arrive; if none
  does, the stream is dead for that pair: it is reported *stale* (the book resyncs and the
  stream is resubscribed) and its next check backs off as well, so a stream that stays dead is
  not resubscribed in a tight loop.

Any diff resets the pair (quiet time from then, no back-off). A pair whose stream has never
delivered is checked too: its first snapshot sets the id the next one must beat. Checks spend at
most ``BUDGET_SHARE`` of the snapshot weight budget (a sliding minute), the busiest pairs (most
diffs seen) first: a busy pair that went quiet is the likeliest to be dead. Time is passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from marketpipe.exchange.weights import WINDOW_SECONDS, depth_weight

CHECK_LIMIT = 100
CHECK_WEIGHT = depth_weight(CHECK_LIMIT)
BUDGET_SHARE = 0.1  # of the snapshot weight budget
GRACE_SECONDS = 2.0
MAX_BACKOFF = 32


@dataclass(slots=True)
class _Pair:
    since: float  # the last diff, or the last verdict: the quiet time counts from there
    update_id: int | None = None  # the u of the last diff seen (or a first check's id)
    diffs: int = 0  # seen so far: how busy the pair is
    backoff: int = 1
    streaming: bool = True  # its stream is up (a pair whose stream is down is not checked)
    checking_since: float | None = None  # a check is in flight, asked then
    stale_at: tuple[float, int] | None = None  # in grace: (verdict time, the exchange's id)


@dataclass(frozen=True, slots=True)
class Decisions:
    check: list[str]  # fetch a check snapshot for these pairs (then ``checked`` / ``check_failed``)
    stale: list[tuple[str, int]]  # (pair, the exchange's update id): resync, resubscribe


@dataclass
class QuietBooks:
    quiet_seconds: float
    snapshot_weight_per_minute: float
    grace_seconds: float = GRACE_SECONDS
    _pairs: dict[str, _Pair] = field(default_factory=dict, repr=False)
    _checks: deque[float] = field(default_factory=deque, repr=False)  # when each was asked

    def __post_init__(self) -> None:
        if self.quiet_seconds <= 0 or self.snapshot_weight_per_minute <= 0:
            raise ValueError("quiet books need a positive quiet time and weight budget")

    @property
    def checks_per_minute(self) -> int:
        return max(1, int(self.snapshot_weight_per_minute * BUDGET_SHARE // CHECK_WEIGHT))

    # What happened.
    def watch(self, symbol: str, now: float) -> None:
        """The pair's stream is up (again): its quiet time starts now."""
        pair = self._pairs.get(symbol)
        if pair is None:
            self._pairs[symbol] = _Pair(since=now)
            return
        pair.streaming, pair.since, pair.backoff, pair.stale_at = True, now, 1, None

    def pause(self, symbol: str) -> None:
        """The pair's stream is down: nothing to check until it is up again."""
        pair = self._pairs.get(symbol)
        if pair is not None:
            pair.streaming, pair.stale_at = False, None

    def remove(self, symbol: str) -> None:
        self._pairs.pop(symbol, None)

    def diff(self, symbol: str, update_id: int, now: float) -> None:
        """A diff of the pair arrived (hot path)."""
        pair = self._pairs.get(symbol)
        if pair is not None:
            pair.since = now
            if pair.update_id is None or update_id > pair.update_id:  # a late one is older
                pair.update_id = update_id
            pair.diffs += 1
            pair.backoff = 1
            pair.stale_at = None

    def checked(self, symbol: str, exchange_update_id: int, now: float) -> None:
        """A check snapshot of the pair arrived with this ``lastUpdateId``."""
        pair = self._pairs.get(symbol)
        if pair is None or pair.checking_since is None:
            return
        asked, pair.checking_since = pair.checking_since, None
        if not pair.streaming or pair.since > asked:
            return  # down meanwhile, or a diff came: nothing to conclude
        if pair.update_id is not None and exchange_update_id > pair.update_id:
            pair.stale_at = (now + self.grace_seconds, exchange_update_id)
            return
        if pair.update_id is None:
            pair.update_id = exchange_update_id  # never delivered: the next check must beat it
        self._back_off(pair, now)

    def check_failed(self, symbol: str, now: float) -> None:
        """The check snapshot could not be fetched: try again after the pair's quiet time."""
        pair = self._pairs.get(symbol)
        if pair is not None and pair.checking_since is not None:
            pair.checking_since = None
            pair.since = now

    # Decisions.
    def tick(self, now: float) -> Decisions:
        stale: list[tuple[str, int]] = []
        due: list[tuple[int, str]] = []
        for symbol, pair in self._pairs.items():
            if pair.stale_at is not None:
                verdict_at, exchange_id = pair.stale_at
                if now >= verdict_at:
                    stale.append((symbol, exchange_id))
                    pair.stale_at = None
                    self._back_off(pair, now)
            elif (
                pair.streaming
                and pair.checking_since is None
                and now - pair.since >= self.quiet_seconds * pair.backoff
            ):
                due.append((pair.diffs, symbol))
        return Decisions(self._within_budget(due, now), stale)

    def _within_budget(self, due: list[tuple[int, str]], now: float) -> list[str]:
        checks = self._checks
        while checks and checks[0] <= now - WINDOW_SECONDS:
            checks.popleft()
        room = self.checks_per_minute - len(checks)
        if room <= 0 or not due:
            return []
        due.sort(key=lambda item: -item[0])  # busiest first
        chosen = [symbol for _, symbol in due[:room]]
        for symbol in chosen:
            self._pairs[symbol].checking_since = now
            checks.append(now)
        return chosen

    def _back_off(self, pair: _Pair, now: float) -> None:
        pair.since = now
        pair.backoff = min(MAX_BACKOFF, pair.backoff * 2)

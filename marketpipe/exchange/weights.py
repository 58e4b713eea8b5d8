"""Exchange REST request weights and a pure gate that keeps spending within a budget.

Binance counts weight per IP in one-minute windows (``X-MBX-USED-WEIGHT-1M``) and answers 429
(slow down) or 418 (banned) with ``Retry-After`` seconds. The gate spends at most
``share * limit`` weight in any sliding 60 s window (stricter than the server's fixed minute, so
the server's count can never exceed it because of us), also honours the server's own count
(other processes on the same IP spend from it too) and, after a 429/418, grants nothing until
``Retry-After`` has passed. Time is passed in (wall-clock seconds) so the gate is testable.

It is a token bucket with a burst of the whole budget: weight not spent in the last 60 s is
spendable at once, and each spent token comes back 60 s after it was spent (not at an even rate,
which would let a full burst plus a minute's refill into one minute). ``wait_for`` peeks at how
long a request would wait without spending anything.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW_SECONDS = 60.0
DEFAULT_RETRY_AFTER_SECONDS = 60.0

EXCHANGE_INFO_WEIGHT = 20
TRADES_WEIGHT = 25


def depth_weight(limit: int) -> int:
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


def ticker_24hr_weight(symbol_count: int | None) -> int:
    """``None``: all symbols (no parameter)."""
    if symbol_count is None or symbol_count > 100:
        return 80
    if symbol_count > 20:
        return 40
    return 2


@dataclass
class WeightGate:
    limit: int = 6000
    share: float = 0.5
    _spent: deque[tuple[float, int]] = field(default_factory=deque, repr=False)
    _spent_total: int = 0
    _server_minute: int = -1
    _server_used: int = 0
    blocked_until: float = 0.0

    def __post_init__(self) -> None:
        if self.limit < 1 or not 0 < self.share <= 1:
            raise ValueError("weight gate needs limit >= 1 and 0 < share <= 1")

    @property
    def budget(self) -> int:
        return max(1, math.floor(self.limit * self.share))

    def used(self, now: float) -> int:
        """Weight this process spent in the last 60 s."""
        self._expire(now)
        return self._spent_total

    def wait_for(self, weight: int, now: float) -> float:
        """Seconds until ``weight`` could be spent (0: now); spends nothing."""
        if now < self.blocked_until:
            return self.blocked_until - now
        self._expire(now)
        # A request heavier than the whole budget still goes when nothing else is in flight,
        # otherwise a tiny configured budget would block it forever.
        wait_local = 0.0
        if self._spent and self._spent_total + weight > self.budget:
            wait_local = self._local_wait(weight, now)
        wait_server = 0.0
        minute = int(now // WINDOW_SECONDS)
        if minute == self._server_minute and self._server_used + weight > self.budget:
            wait_server = (minute + 1) * WINDOW_SECONDS - now
        return max(wait_local, wait_server)

    def try_acquire(self, weight: int, now: float) -> float:
        """Spend ``weight`` and return 0, or spend nothing and return seconds to wait."""
        wait = self.wait_for(weight, now)
        if wait > 0:
            return wait
        self._spent.append((now, weight))
        self._spent_total += weight
        if int(now // WINDOW_SECONDS) == self._server_minute:
            self._server_used += weight
        return 0.0

    def observe_used(self, used: int, now: float) -> None:
        """The server's ``X-MBX-USED-WEIGHT-1M`` for the minute containing ``now``."""
        minute = int(now // WINDOW_SECONDS)
        if minute != self._server_minute:
            self._server_minute, self._server_used = minute, used
        else:
            self._server_used = max(self._server_used, used)

    def on_rate_limited(self, retry_after: float | None, now: float) -> None:
        """A 429 or 418: nothing goes out until ``Retry-After`` has passed (process-wide)."""
        delay = DEFAULT_RETRY_AFTER_SECONDS if retry_after is None else max(0.0, retry_after)
        self.blocked_until = max(self.blocked_until, now + delay)

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - WINDOW_SECONDS:
            _, weight = self._spent.popleft()
            self._spent_total -= weight

    def _local_wait(self, weight: int, now: float) -> float:
        """Seconds until enough old spending leaves the window to fit ``weight``."""
        excess = self._spent_total + weight - self.budget
        freed = 0
        for at, spent in self._spent:
            freed += spent
            if freed >= excess:
                return at + WINDOW_SECONDS - now
        return self._spent[-1][0] + WINDOW_SECONDS - now

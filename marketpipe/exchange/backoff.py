"""Exponential backoff with full jitter and a cap: retries slow down but never give up."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# 2**60 already dwarfs any sane cap; stops the exponent from overflowing a float.
_MAX_EXPONENT = 60


@dataclass
class Backoff:
    """``next_delay()`` draws uniformly from ``[0, min(cap, base * factor**attempts)]``.

    Full jitter (rather than a fixed schedule) keeps many clients that failed together from
    retrying together. ``reset()`` after a success starts the schedule over.
    """

    base: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = 0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap <= 0 or self.factor < 1:
            raise ValueError("backoff needs base > 0, cap > 0 and factor >= 1")

    def ceiling(self) -> float:
        """The largest delay the next attempt may draw."""
        return min(self.cap, self.base * self.factor ** min(self.attempts, _MAX_EXPONENT))

    def next_delay(self) -> float:
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0

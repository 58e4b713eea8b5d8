"""A leadership term: the right to publish one shard's data, from election to step-down.

Everything a leader writes is tied to the term it was made under (DESIGN §8): the message
carries ``term.epoch``, and the transports let it out only while ``term.valid()``, that is,
until the term was ended (stepped down, resigned) and never past the lease's local deadline,
even if the step-down itself has not run yet (a process paused by SIGSTOP wakes up with its
timers overdue: the check on the way out does not wait for them)::

    term = ctx.term                        # None while following
    payload = render(..., epoch=term.epoch)
    ctx.publish(subject, payload, term)    # refused once the term is over
"""

from __future__ import annotations

import math
import time
from typing import Protocol


class Fence(Protocol):
    """What the transports check a write against: a :class:`Term` (or a test's stand-in)."""

    epoch: int

    def valid(self) -> bool: ...


class LeaseClock:
    """The local deadline until which the instance's lease surely lives (monotonic seconds)."""

    __slots__ = ("deadline",)

    def __init__(self, deadline: float = math.inf) -> None:
        self.deadline = deadline


class Term:
    __slots__ = ("ended", "epoch", "lease", "reason", "shard")

    def __init__(self, epoch: int, lease: LeaseClock, shard: int = 0) -> None:
        self.epoch = epoch
        self.shard = shard
        self.lease = lease
        self.ended = False
        self.reason: str | None = None

    def valid(self) -> bool:
        return not self.ended and time.monotonic() < self.lease.deadline

    def end(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self.reason = reason

    def __repr__(self) -> str:
        state = f"ended: {self.reason}" if self.ended else "open"
        return f"Term(shard={self.shard}, epoch={self.epoch}, {state})"

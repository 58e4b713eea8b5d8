import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.exchange.backoff import Backoff


@given(
    base=st.floats(0.01, 5),
    cap=st.floats(0.01, 120),
    factor=st.floats(1, 4),
    attempts=st.integers(0, 500),
    seed=st.integers(0, 2**32),
)
def test_delays_stay_within_the_exponential_ceiling_and_the_cap(
    base: float, cap: float, factor: float, attempts: int, seed: int
) -> None:
    backoff = Backoff(base=base, cap=cap, factor=factor, rng=random.Random(seed))
    for n in range(attempts):
        delay = backoff.next_delay()
        assert 0 <= delay <= min(cap, base * factor ** min(n, 60))
    assert backoff.attempts == attempts


def test_ceiling_grows_then_caps_and_reset_starts_over() -> None:
    backoff = Backoff(base=1, cap=10, factor=2)
    ceilings = []
    for _ in range(6):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == [1, 2, 4, 8, 10, 10]
    backoff.reset()
    assert backoff.ceiling() == 1


def test_jitter_spreads_delays() -> None:
    backoff = Backoff(base=8, cap=8, rng=random.Random(1))
    delays = {round(backoff.next_delay(), 3) for _ in range(50)}
    assert len(delays) > 40


def test_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0)

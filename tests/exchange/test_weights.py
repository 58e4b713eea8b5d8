from hypothesis import given
from hypothesis import strategies as st

from marketpipe.exchange.weights import WeightGate, depth_weight, ticker_24hr_weight


def test_endpoint_weights_follow_the_exchange_table() -> None:
    assert [depth_weight(n) for n in (1, 100, 101, 500, 501, 1000, 1001, 5000)] == [
        5, 5, 25, 25, 50, 50, 250, 250,
    ]  # fmt: skip
    assert [ticker_24hr_weight(n) for n in (1, 20, 21, 100, 101, None)] == [2, 2, 40, 40, 80, 80]


requests = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.sampled_from([5, 20, 25, 50, 80, 250])),
    min_size=1,
    max_size=300,
)


@given(requests=requests, share=st.sampled_from([0.1, 0.25, 0.5, 1.0]))
def test_granted_weight_never_exceeds_the_budget_in_any_minute(
    requests: list[tuple[float, int]], share: float
) -> None:
    gate = WeightGate(limit=6000, share=share)
    now = 1_000_000.0
    granted: list[tuple[float, int]] = []
    for gap, weight in requests:
        now += gap
        while (wait := gate.try_acquire(weight, now)) > 0:
            assert wait <= 60
            now += wait
        granted.append((now, weight))
    for start, _ in granted:
        in_window = sum(w for t, w in granted if start <= t < start + 60)
        assert in_window <= gate.budget


@given(retry_after=st.floats(0.5, 600), probes=st.lists(st.floats(0, 1), max_size=20))
def test_nothing_is_granted_before_retry_after(retry_after: float, probes: list[float]) -> None:
    gate = WeightGate()
    gate.on_rate_limited(retry_after, now=100.0)
    for fraction in probes:
        at = 100.0 + fraction * retry_after * 0.999
        assert gate.try_acquire(5, at) > 0
    assert gate.try_acquire(5, 100.0 + retry_after) == 0


def test_a_second_shorter_retry_after_does_not_shorten_the_block() -> None:
    gate = WeightGate()
    gate.on_rate_limited(120, now=0.0)
    gate.on_rate_limited(5, now=1.0)
    assert gate.try_acquire(5, 10.0) == 110.0


def test_server_count_holds_us_until_the_next_minute() -> None:
    gate = WeightGate(limit=6000, share=0.5)
    gate.observe_used(2990, now=600.0)  # another process on our IP spent most of the budget
    assert gate.try_acquire(5, 601.0) == 0
    assert gate.try_acquire(25, 610.0) == 50.0
    assert gate.try_acquire(25, 660.0) == 0  # new minute: the server's count started over


def test_a_request_heavier_than_the_budget_goes_when_nothing_else_is_in_flight() -> None:
    gate = WeightGate(limit=100, share=0.5)
    assert gate.try_acquire(250, 0.0) == 0
    assert gate.try_acquire(5, 1.0) == 59.0


@given(requests=requests, peeks=st.lists(st.sampled_from([5, 25, 250, 5000]), max_size=5))
def test_the_peek_tells_what_try_acquire_would_and_spends_nothing(
    requests: list[tuple[float, int]], peeks: list[int]
) -> None:
    gate = WeightGate(limit=1000, share=0.5)
    gate.observe_used(300, now=1_000_000.0)
    now = 1_000_000.0
    for gap, weight in requests:
        now += gap
        used = gate.used(now)
        for peek in peeks:
            assert gate.wait_for(peek, now) >= 0
        assert gate.used(now) == used
        wait = gate.wait_for(weight, now)
        assert gate.try_acquire(weight, now) == wait
        assert gate.used(now) == used + (weight if wait == 0 else 0)


@given(weight=st.sampled_from([5, 25, 50, 250]), idle=st.floats(60, 600))
def test_an_idle_budget_is_spendable_at_once_in_a_burst(weight: int, idle: float) -> None:
    gate = WeightGate(limit=6000, share=0.5)
    gate.try_acquire(gate.budget, 0.0)  # a full minute's worth spent long ago
    now = idle
    granted = 0
    while gate.wait_for(weight, now) == 0:
        assert gate.try_acquire(weight, now) == 0
        granted += weight
    assert granted == gate.budget // weight * weight  # all of it, no time passing
    assert 0 < gate.wait_for(weight, now) <= 60 + 1e-6  # the burst comes back a minute on

"""QuietBooks: which silent pairs are checked against a snapshot, and which are found stale."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.services.quiet_books import CHECK_WEIGHT, MAX_BACKOFF, QuietBooks

QUIET = 10.0
TICK = 0.5
BUDGET = 2400.0  # snapshot weight a minute: 48 checks a minute


@dataclass
class Market:
    """One pair as the exchange and the stream see it, tick by tick."""

    kind: str  # "flowing": a diff every `every` s; "halted": nothing changes; "dead": the
    # exchange moves on but the stream delivers nothing from `dies_at`
    every: float = 1.0
    dies_at: float = 0.0
    update_id: int = 100
    last_diff: float = 0.0
    delivered: bool = False  # the stream delivered at least one diff

    def step(self, now: float) -> int | None:
        """The id of a diff the stream delivers now, if any (the exchange moves on regardless)."""
        if self.kind == "halted" or now - self.last_diff < self.every:
            return None
        self.last_diff = now
        self.update_id += 1
        if self.kind == "dead" and now >= self.dies_at:
            return None
        self.delivered = True
        return self.update_id


@dataclass
class Run:
    checks: dict[str, list[float]]
    stale: dict[str, list[float]]


def drive(markets: dict[str, Market], seconds: float, lag: float = 0.0) -> Run:
    """Tick every TICK s; each check is answered ``lag`` later with the exchange's id then."""
    quiet = QuietBooks(QUIET, BUDGET)
    for symbol in markets:
        quiet.watch(symbol, 0.0)
    run = Run({s: [] for s in markets}, {s: [] for s in markets})
    answers: list[tuple[float, str]] = []
    now = 0.0
    while now <= seconds:
        for symbol, market in markets.items():
            update_id = market.step(now)
            if update_id is not None:
                quiet.diff(symbol, update_id, now)
        for at, symbol in [a for a in answers if a[0] <= now]:
            answers.remove((at, symbol))
            quiet.checked(symbol, markets[symbol].update_id, now)
        decisions = quiet.tick(now)
        for symbol in decisions.check:
            run.checks[symbol].append(now)
            answers.append((now + lag, symbol))
        for symbol, exchange_id in decisions.stale:
            assert exchange_id == markets[symbol].update_id or markets[symbol].kind == "dead"
            run.stale[symbol].append(now)
        now = round(now + TICK, 6)
    return run


markets_st = st.dictionaries(
    st.sampled_from([f"P{i}" for i in range(8)]),
    st.one_of(
        st.builds(Market, st.just("flowing"), st.sampled_from([0.5, 1.0, 5.0, 9.0])),
        st.builds(Market, st.just("halted")),
        st.builds(Market, st.just("dead"), st.sampled_from([0.5, 1.0]), st.floats(0, 60)),
    ),
    min_size=1,
)


@settings(max_examples=150, deadline=None)
@given(markets_st, st.sampled_from([0.0, 0.5, 1.5]))
def test_only_dead_streams_are_stale_and_each_is_found_soon(
    markets: dict[str, Market], lag: float
) -> None:
    run = drive(markets, 200.0, lag)
    for symbol, market in markets.items():
        if market.kind != "dead":
            assert run.stale[symbol] == [], (symbol, market)
            continue
        # quiet time, the check's answer, the grace for diffs in flight, a tick or two; a stream
        # that never delivered needs a second check (backed off) to see the exchange move
        found = run.stale[symbol][0]
        checks = QUIET if market.delivered else 3 * QUIET + lag + TICK
        assert found - market.dies_at <= checks + lag + 2.0 + 2 * market.every + 2 * TICK


@settings(max_examples=100, deadline=None)
@given(markets_st)
def test_a_flowing_pair_is_never_checked_and_a_silent_one_backs_off(
    markets: dict[str, Market],
) -> None:
    run = drive(markets, 400.0)
    for symbol, market in markets.items():
        times = run.checks[symbol] + run.stale[symbol]
        if market.kind == "flowing":
            assert times == [], symbol
            continue
        # checks (and stale verdicts) come ever further apart, doubling up to 32 quiet times
        gaps = [b - a for a, b in pairwise(run.checks[symbol])]
        assert all(g >= QUIET for g in gaps), gaps
        assert all(b >= min(2 * a, MAX_BACKOFF * QUIET) - 3.0 for a, b in pairwise(gaps)), gaps
        assert len(run.checks[symbol]) <= 8  # 10, 30, 70, 150, 310 s (+ grace): few in 400 s


def test_a_halted_pair_is_never_stale_and_its_checks_double() -> None:
    run = drive({"H": Market("halted")}, 400.0)
    assert run.stale["H"] == []
    # each answered at the next tick: 10 s, then 20, 40, 80, 160 s after the answer
    assert run.checks["H"] == [10.0, 30.5, 71.0, 151.5, 312.0]


def test_a_stream_that_never_delivered_is_stale_once_the_exchange_moves() -> None:
    run = drive({"D": Market("dead", every=1.0, dies_at=0.0)}, 40.0)
    # the first check learns where the exchange is; the next one (20 s later) finds it moved
    assert run.checks["D"][:2] == [10.0, 30.5]
    assert run.stale["D"] == [33.0]


def test_a_diff_within_the_grace_clears_the_suspicion() -> None:
    quiet = QuietBooks(QUIET, BUDGET)
    quiet.watch("A", 0.0)
    quiet.diff("A", 5, 0.0)
    assert quiet.tick(10.0).check == ["A"]
    quiet.checked("A", 7, 10.1)  # the exchange is ahead: diffs may be on their way
    assert quiet.tick(11.0).stale == []
    quiet.diff("A", 7, 11.5)
    assert quiet.tick(12.5).stale == [] and quiet.tick(30.0).stale == []


def test_a_late_diff_does_not_make_a_quiet_pair_look_behind() -> None:
    quiet = QuietBooks(QUIET, BUDGET)
    quiet.watch("A", 0.0)
    quiet.diff("A", 7, 0.0)
    quiet.diff("A", 6, 0.0)  # reordered on the way: the book is at 7
    assert quiet.tick(10.0).check == ["A"]
    quiet.checked("A", 7, 10.1)
    assert quiet.tick(13.0).stale == [] and quiet.tick(25.0).check == []  # quiet: backed off


def test_a_diff_during_the_check_or_a_stream_down_voids_it() -> None:
    quiet = QuietBooks(QUIET, BUDGET)
    quiet.watch("A", 0.0)
    quiet.diff("A", 5, 0.0)
    assert quiet.tick(10.0).check == ["A"]
    quiet.diff("A", 6, 10.05)
    quiet.checked("A", 9, 10.1)
    assert quiet.tick(13.0).stale == []
    assert quiet.tick(20.1).check == ["A"]  # quiet again since 10.05, no back-off
    quiet.pause("A")
    quiet.checked("A", 9, 20.2)
    assert quiet.tick(60.0).check == [] and quiet.tick(60.0).stale == []
    quiet.watch("A", 60.0)
    assert quiet.tick(70.0).check == ["A"]
    quiet.check_failed("A", 70.5)
    assert quiet.tick(80.0).check == [] and quiet.tick(80.5).check == ["A"]
    quiet.remove("A")
    quiet.checked("A", 9, 81.0)
    assert quiet.tick(200.0).check == []


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 300), st.floats(200, 10_000))
def test_checks_stay_within_a_tenth_of_the_snapshot_budget_busiest_first(
    pairs: int, budget: float
) -> None:
    quiet = QuietBooks(QUIET, budget)
    for i in range(pairs):
        quiet.watch(f"P{i}", 0.0)
        for u in range(i):  # P<i> saw i diffs: the higher i, the busier
            quiet.diff(f"P{i}", u, 0.0)
    asked: list[tuple[float, str]] = []
    now = 0.0
    while now < 300.0:
        for symbol in quiet.tick(now).check:
            asked.append((now, symbol))
            quiet.checked(symbol, 10_000, now)  # all moved on: each stale after the grace
        now += TICK
    limit = max(1, int(budget * 0.1 // CHECK_WEIGHT))
    times = [t for t, _ in asked]
    for t in times:
        assert sum(1 for u in times if t <= u < t + 60.0) <= limit
    first = [s for t, s in asked if t == times[0]]
    assert first == [f"P{i}" for i in range(pairs - 1, pairs - 1 - len(first), -1)]


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        QuietBooks(0.0, BUDGET)
    with pytest.raises(ValueError):
        QuietBooks(QUIET, 0.0)

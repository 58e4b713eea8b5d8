import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from marketpipe.exchange.snapshot_plan import SnapshotPlanner, Tier, tier_of

symbols = st.sampled_from([f"S{i}USDT" for i in range(12)])
requests = st.lists(st.tuples(symbols, st.booleans(), st.booleans()), max_size=60)


def drain(planner: SnapshotPlanner, now: float = 0.0) -> list[tuple[str, Tier, float]]:
    popped = []
    while (delay := planner.due_in(now)) is not None:
        now += delay
        job = planner.pop(now)
        assert job is not None
        popped.append((job.symbol, job.tier, now))
        planner.finished(job.symbol)
    return popped


@given(requests=requests)
def test_each_symbol_once_in_its_best_tier_first_come_first_served(
    requests: list[tuple[str, bool, bool]],
) -> None:
    planner = SnapshotPlanner(weight_per_minute=2400, rng=random.Random(0))
    best: dict[str, Tier] = {}
    for symbol, priority, resync in requests:
        planner.request(symbol, priority=priority, resync=resync)
        best[symbol] = min(best.get(symbol, Tier.INITIAL), tier_of(priority, resync))
    popped = drain(planner)
    assert sorted(s for s, _, _ in popped) == sorted(best)
    assert {s: t for s, t, _ in popped} == best
    tiers = [t for _, t, _ in popped]
    assert tiers == sorted(tiers)


@given(requests=requests, budget=st.sampled_from([300, 2400, 6000]))
def test_pacing_keeps_snapshot_weight_within_the_budget(
    requests: list[tuple[str, bool, bool]], budget: int
) -> None:
    planner = SnapshotPlanner(weight_per_minute=budget, rng=random.Random(1))
    for symbol, priority, resync in requests:
        planner.request(symbol, priority=priority, resync=resync)
    popped = drain(planner)
    weights = {True: 250, False: 25}
    for i, (_, _, start) in enumerate(popped):
        # each fetch "pays" for the gap after it, so any window holds one fetch plus the gaps
        window = [
            weights[t in (Tier.PRIORITY, Tier.PRIORITY_RESYNC)]
            for _, t, at in popped[i:]
            if at < start + 60
        ]
        assert sum(window) <= budget + max(window)


def test_priority_resync_jumps_the_queue() -> None:
    planner = SnapshotPlanner(weight_per_minute=6000)
    for name in ("A", "B", "C"):
        planner.request(name, priority=True)
    planner.request("Z")
    planner.request("C", priority=True, resync=True)
    assert [s for s, _, _ in drain(planner)] == ["C", "A", "B", "Z"]


def test_requests_while_in_flight_join_that_fetch() -> None:
    planner = SnapshotPlanner(weight_per_minute=6000)
    planner.request("A")
    job = planner.pop(0.0)
    assert job is not None and planner.is_in_flight("A")
    assert not planner.request("A", resync=True)
    planner.finished("A")
    assert planner.request("A", resync=True)


def test_limits_by_kind_and_upgrade_keeps_the_larger_limit() -> None:
    planner = SnapshotPlanner(weight_per_minute=6000, priority_limit=5000, other_limit=500)
    planner.request("A")
    planner.request("B", limit=100)
    planner.request("B", priority=True)
    jobs = [planner.pop(at) for at in (1e6, 2e6)]
    assert [(j.symbol, j.limit, j.weight) for j in jobs if j] == [("B", 5000, 250), ("A", 500, 25)]


def test_cancelled_symbols_are_not_fetched() -> None:
    planner = SnapshotPlanner(weight_per_minute=6000)
    planner.request("A")
    planner.request("B")
    planner.cancel("A")
    assert [s for s, _, _ in drain(planner)] == ["B"]


def test_jitter_spreads_symbols_that_asked_together() -> None:
    planner = SnapshotPlanner(weight_per_minute=3000, rng=random.Random(7))
    for i in range(20):
        planner.request(f"S{i}")
    times = [at for _, _, at in drain(planner)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.5 <= g <= 0.6 for g in gaps)  # 25 weight at 50/s: 0.5 s, plus up to 20 %
    assert len({round(g, 4) for g in gaps}) > 10

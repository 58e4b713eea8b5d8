from hypothesis import given
from hypothesis import strategies as st

from marketpipe.exchange.snapshot_plan import (
    WEIGHT_STEPS,
    SnapshotPlanner,
    Tier,
    snapshot_limit,
    tier_of,
)
from marketpipe.exchange.weights import WeightGate, depth_weight

symbols = st.sampled_from([f"S{i}USDT" for i in range(12)])
requests = st.lists(st.tuples(symbols, st.booleans(), st.booleans()), max_size=60)


def limit_for(priority: bool) -> int:
    return 5000 if priority else 500


def ask(
    planner: SnapshotPlanner, symbol: str, priority: bool = False, resync: bool = False
) -> bool:
    return planner.request(symbol, limit=limit_for(priority), priority=priority, resync=resync)


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
    planner = SnapshotPlanner(weight_per_minute=2400)
    best: dict[str, Tier] = {}
    for symbol, priority, resync in requests:
        ask(planner, symbol, priority, resync)
        best[symbol] = min(best.get(symbol, Tier.INITIAL), tier_of(priority, resync))
    popped = drain(planner)
    assert sorted(s for s, _, _ in popped) == sorted(best)
    assert {s: t for s, t, _ in popped} == best
    tiers = [t for _, t, _ in popped]
    assert tiers == sorted(tiers)


@given(requests=requests, budget=st.sampled_from([300, 2400, 6000]))
def test_snapshot_weight_stays_within_the_budget_in_any_minute(
    requests: list[tuple[str, bool, bool]], budget: int
) -> None:
    planner = SnapshotPlanner(weight_per_minute=budget)
    for symbol, priority, resync in requests:
        ask(planner, symbol, priority, resync)
    popped = drain(planner, now=1000.0)
    weights = {True: 250, False: 25}
    for _, _, start in popped:
        window = [
            weights[t in (Tier.PRIORITY, Tier.PRIORITY_RESYNC)]
            for _, t, at in popped
            if start <= at < start + 60
        ]
        assert sum(window) <= budget


@given(count=st.integers(1, 1000), budget=st.sampled_from([300, 2400, 6000]))
def test_an_idle_budget_goes_at_once_in_a_burst_then_as_it_comes_back(
    count: int, budget: int
) -> None:
    planner = SnapshotPlanner(weight_per_minute=budget)
    for i in range(count):
        planner.request(f"S{i}", limit=100)  # weight 5
    popped = drain(planner, now=1000.0)
    burst = min(count, budget // 5)
    assert [at for _, _, at in popped[:burst]] == [1000.0] * burst
    assert all(at >= 1060.0 for _, _, at in popped[burst:])  # the burst's weight came back


def test_the_process_gate_holds_the_planner_back() -> None:
    ip_gate = WeightGate(limit=100, share=1.0)
    planner = SnapshotPlanner(weight_per_minute=6000, ip_gate=ip_gate)
    planner.request("A", limit=100)
    ip_gate.observe_used(98, now=600.0)  # others on our IP spent nearly all of this minute
    assert planner.due_in(601.0) == 59.0 and planner.pop(601.0) is None
    assert ip_gate.used(601.0) == 0  # the planner only peeks: the REST client spends
    ip_gate.on_rate_limited(90, now=602.0)
    assert planner.due_in(660.0) == 32.0  # a Retry-After holds it too
    job = planner.pop(692.0)
    assert job is not None and job.symbol == "A"


def test_the_head_of_the_queue_waits_rather_than_let_lighter_jobs_pass() -> None:
    planner = SnapshotPlanner(weight_per_minute=300)
    planner.request("A", limit=100)
    planner.request("B", limit=5000, priority=True)  # 250
    planner.request("C", limit=1000)  # 50
    popped = drain(planner)
    assert [(s, at) for s, _, at in popped] == [("B", 0.0), ("A", 0.0), ("C", 60.0)]


def test_priority_resync_jumps_the_queue() -> None:
    planner = SnapshotPlanner(weight_per_minute=6000)
    for name in ("A", "B", "C"):
        ask(planner, name, priority=True)
    ask(planner, "Z")
    ask(planner, "C", priority=True, resync=True)
    assert [s for s, _, _ in drain(planner)] == ["C", "A", "B", "Z"]


def test_requests_while_in_flight_join_that_fetch() -> None:
    planner = SnapshotPlanner(weight_per_minute=6000)
    ask(planner, "A")
    job = planner.pop(0.0)
    assert job is not None and planner.is_in_flight("A")
    assert not ask(planner, "A", resync=True)
    planner.finished("A")
    assert ask(planner, "A", resync=True)


def test_moving_up_a_tier_keeps_the_larger_limit() -> None:
    planner = SnapshotPlanner(weight_per_minute=6000)
    planner.request("A", limit=500)
    planner.request("B", limit=5000)
    planner.request("B", limit=100, priority=True)
    jobs = [planner.pop(at) for at in (1e6, 2e6)]
    assert [(j.symbol, j.limit, j.weight) for j in jobs if j] == [("B", 5000, 250), ("A", 500, 25)]


def test_cancelled_symbols_are_not_fetched() -> None:
    planner = SnapshotPlanner(weight_per_minute=6000)
    ask(planner, "A")
    ask(planner, "B")
    planner.cancel("A")
    assert [s for s, _, _ in drain(planner)] == ["B"]


@given(depth=st.integers(1, 5000))
def test_the_automatic_limit_is_the_cheapest_step_covering_twice_the_depth(depth: int) -> None:
    limit = snapshot_limit(0, depth)
    assert limit in WEIGHT_STEPS
    assert limit >= 2 * depth or limit == 5000
    cheaper = [s for s in WEIGHT_STEPS if depth_weight(s) < depth_weight(limit)]
    assert all(s < 2 * depth for s in cheaper)


def test_the_automatic_limit_of_a_shallow_view_costs_5() -> None:
    assert [snapshot_limit(0, d) for d in (1, 20, 50, 51, 250, 251, 500, 501, 2500, 5000)] == [
        100, 100, 100, 500, 500, 1000, 1000, 5000, 5000, 5000,
    ]  # fmt: skip
    assert depth_weight(snapshot_limit(0, 20)) == 5


@given(configured=st.integers(1, 5000), depth=st.integers(1, 5000))
def test_a_configured_limit_is_kept_unless_the_view_needs_more(configured: int, depth: int) -> None:
    assert snapshot_limit(configured, depth) == min(5000, max(configured, 2 * depth))
    assert snapshot_limit(5000, depth) == 5000  # full depth stays full depth

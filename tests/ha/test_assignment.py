"""The shard assignment and the per-instance plan (pure): balance, stability, determinism, a leader
candidate for every shard, make-before-break hand-overs and hot failovers."""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.ha.assignment import Assignment, ClusterView, Plan, assign, plan, shard_of

ids = st.text(alphabet="abcdefgh-0123456789", min_size=1, max_size=6)
instance_lists = st.lists(ids, min_size=1, max_size=8, unique=True)
shard_counts = st.integers(1, 20)
standby_counts = st.integers(0, 3)


@st.composite
def views(draw: st.DrawFn) -> tuple[ClusterView, int]:
    """Any view at all: holders and hot shards of live and dead instances, shards out of range."""
    instances = draw(instance_lists)
    shards = draw(shard_counts)
    anyone = st.sampled_from([*instances, *draw(st.lists(ids, max_size=2))])
    some_shards = st.integers(0, shards + 1)
    holders = draw(st.dictionaries(some_shards, anyone))
    hot = draw(st.dictionaries(anyone, st.frozensets(some_shards)))
    return ClusterView(frozenset(instances), holders, hot), shards


def roles(wanted: Assignment, instance: str) -> frozenset[int]:
    return wanted.leading(instance) | wanted.standing_by(instance)


def slots(standbys: int, instances: int) -> int:
    return min(standbys, instances - 1)


def settled_view(instances: list[str], wanted: Assignment) -> ClusterView:
    """The view once every wanted role is taken: leaders hold their keys, everyone is hot."""
    return ClusterView(
        frozenset(instances),
        {k: r.leader for k, r in enumerate(wanted.shards)},
        {i: roles(wanted, i) for i in instances},
    )


def settle(instances: list[str], shards: int, standbys: int) -> tuple[ClusterView, Assignment]:
    wanted = assign(ClusterView(frozenset(instances)), shards, standbys)
    view = settled_view(instances, wanted)
    return view, assign(view, shards, standbys)


# --- any view ---


@settings(deadline=None)
@given(views(), standby_counts)
def test_every_shard_has_a_live_leader_and_leaderships_are_balanced(
    case: tuple[ClusterView, int], standbys: int
) -> None:
    view, shards = case
    wanted = assign(view, shards, standbys)
    assert len(wanted.shards) == shards
    assert all(roles.leader in view.instances for roles in wanted.shards)
    led = Counter(roles.leader for roles in wanted.shards)
    for instance in view.instances:
        assert (
            shards // len(view.instances)
            <= led[instance]
            <= math.ceil(shards / len(view.instances))
        )


@settings(deadline=None)
@given(views(), standby_counts)
def test_standbys_are_distinct_never_the_leader_and_balanced(
    case: tuple[ClusterView, int], standbys: int
) -> None:
    view, shards = case
    n = len(view.instances)
    wanted = assign(view, shards, standbys)
    for roles in wanted.shards:
        assert len(set(roles.standbys)) == len(roles.standbys) == slots(standbys, n)
        assert roles.leader not in roles.standbys
        assert set(roles.standbys) <= view.instances
    standing = Counter(i for roles in wanted.shards for i in roles.standbys)
    total = Counter(roles.leader for roles in wanted.shards) + standing
    for instance in view.instances:
        assert standing[instance] <= math.ceil(shards * slots(standbys, n) / n)
        # leading and standing by together: nobody ingests much more than the rest
        assert total[instance] <= math.ceil(shards * (1 + slots(standbys, n)) / n)


@settings(deadline=None)
@given(views(), standby_counts, st.randoms(use_true_random=False))
def test_the_assignment_depends_on_the_view_not_on_input_order(
    case: tuple[ClusterView, int], standbys: int, rng: random.Random
) -> None:
    view, shards = case

    def shuffled(items: list) -> list:
        items = list(items)
        rng.shuffle(items)
        return items

    reordered = ClusterView(
        frozenset(shuffled(list(view.instances))),
        dict(shuffled(list(view.holders.items()))),
        {i: frozenset(shuffled(list(s))) for i, s in shuffled(list(view.hot.items()))},
    )
    assert assign(reordered, shards, standbys) == assign(view, shards, standbys)


@settings(deadline=None)
@given(views(), standby_counts)
def test_every_free_shard_has_exactly_one_campaigner(
    case: tuple[ClusterView, int], standbys: int
) -> None:
    view, shards = case
    wanted = assign(view, shards, standbys)
    plans = {i: plan(i, view, wanted) for i in view.instances}
    for k in range(shards):
        campaigners = [i for i, p in plans.items() if k in p.campaign]
        assert len(campaigners) == (0 if k in view.holders else 1)
        # a hot instance takes it if there is one: no snapshot, the failover stays in the TTL
        if campaigners and any(view.is_hot(i, k) for i in view.instances):
            assert view.is_hot(campaigners[0], k)


@settings(deadline=None)
@given(views(), standby_counts, st.data())
def test_a_plan_hands_over_only_to_a_hot_successor_and_drops_only_settled_shards(
    case: tuple[ClusterView, int], standbys: int, data: st.DataObject
) -> None:
    view, shards = case
    wanted = assign(view, shards, standbys)
    for me in view.instances:
        ingesting = data.draw(st.frozensets(st.integers(0, shards + 1)))
        p = plan(me, view, wanted, ingesting)
        held = {k for k, holder in view.holders.items() if holder == me}
        assert p.resign <= held
        for k in p.resign:
            assert k >= shards or view.is_hot(wanted.shards[k].leader, k)
        assert roles(wanted, me) <= p.ingest
        # a resigned shard stays in sync until its successor holds it
        assert {k for k in held if k < shards} - p.resign <= p.ingest
        assert {k for k in held & ingesting if k < shards} <= p.ingest
        assert p.stop == ingesting - p.ingest
        for k in p.stop:
            assert k >= shards or (
                view.holders.get(k) == wanted.shards[k].leader
                and all(
                    view.is_hot(i, k) for i in (wanted.shards[k].leader, *wanted.shards[k].standbys)
                )
            )


# --- from a settled cluster ---


@settings(deadline=None)
@given(instance_lists, shard_counts, standby_counts)
def test_a_settled_assignment_is_a_fixed_point(
    instances: list[str], shards: int, standbys: int
) -> None:
    view, wanted = settle(instances, shards, standbys)
    assert settled_view(instances, wanted) == view
    assert all(
        plan(i, view, wanted, roles(wanted, i))
        == Plan(frozenset(), frozenset(), roles(wanted, i), frozenset())
        for i in instances
    )


@settings(deadline=None)
@given(instance_lists, ids, shard_counts, standby_counts)
def test_a_join_moves_only_the_newcomers_share_of_leaderships(
    instances: list[str], newcomer: str, shards: int, standbys: int
) -> None:
    if newcomer in instances:
        return
    view, before = settle(instances, shards, standbys)
    after = assign(
        ClusterView(view.instances | {newcomer}, view.holders, view.hot), shards, standbys
    )
    moved = [k for k in range(shards) if after.shards[k].leader != before.shards[k].leader]
    assert len(moved) <= math.ceil(shards / (len(instances) + 1))
    assert all(after.shards[k].leader == newcomer for k in moved)
    # the newcomer takes on most of the new work (balancing standbys may shift a few others)
    new_roles = sum(len(roles(after, i) - roles(before, i)) for i in instances)
    assert new_roles <= len(roles(after, newcomer))


@settings(deadline=None)
@given(st.lists(ids, min_size=2, max_size=8, unique=True), shard_counts, standby_counts, st.data())
def test_a_death_moves_only_the_dead_instances_leaderships_to_its_first_standbys(
    instances: list[str], shards: int, standbys: int, data: st.DataObject
) -> None:
    view, before = settle(instances, shards, standbys)
    dead = data.draw(st.sampled_from(instances))
    survivors = [i for i in instances if i != dead]
    after_death = ClusterView(
        frozenset(survivors),
        {k: i for k, i in view.holders.items() if i != dead},
        {i: view.hot[i] for i in survivors},
    )
    wanted = assign(after_death, shards, standbys)
    orphans = before.leading(dead)
    for k in range(shards):
        campaigners = [i for i in survivors if k in plan(i, after_death, wanted).campaign]
        if k not in orphans:
            assert wanted.shards[k].leader == before.shards[k].leader
            assert campaigners == []
        elif before.shards[k].standbys:
            assert campaigners == [before.shards[k].standbys[0]]
        else:
            assert campaigners == [wanted.shards[k].leader]
    # each of the dead instance's roles needs about one new one (a standby took over its
    # leaderships); rebalancing may add a few more, never a reshuffle
    new_roles = sum(len(roles(wanted, i) - roles(before, i)) for i in survivors)
    share = math.ceil(shards * (1 + slots(standbys, len(instances))) / len(instances))
    assert new_roles <= 2 * share


# --- a cluster of instances applying their plans ---


@dataclass
class Cluster:
    """The etcd view and each instance's ingestion, moved only by the instances' own plans."""

    shards: int
    standbys: int
    holders: dict[int, str] = field(default_factory=dict)
    hot: dict[str, set[int]] = field(default_factory=dict)
    ingesting: dict[str, set[int]] = field(default_factory=dict)

    @classmethod
    def started(cls, instances: Iterable[str], shards: int, standbys: int) -> Cluster:
        """A cluster of ``instances`` that has settled: every wanted role taken and hot."""
        cluster = cls(shards, standbys)
        for i in instances:
            cluster.join(i)
        cluster.settle()
        return cluster

    @property
    def live(self) -> list[str]:
        return sorted(self.ingesting)

    def view(self) -> ClusterView:
        return ClusterView(
            frozenset(self.live), dict(self.holders), {i: frozenset(s) for i, s in self.hot.items()}
        )

    def wanted(self) -> Assignment:
        return assign(self.view(), self.shards, self.standbys)

    def join(self, me: str) -> None:
        self.ingesting.setdefault(me, set())
        self.hot.setdefault(me, set())

    def kill(self, me: str) -> None:
        del self.ingesting[me], self.hot[me]
        self.holders = {k: i for k, i in self.holders.items() if i != me}

    def sync(self, me: str, shard: int | None = None) -> None:
        """Snapshots done: every shard ``me`` ingests (or just ``shard``) is in sync."""
        self.hot[me] |= self.ingesting[me] if shard is None else self.ingesting[me] & {shard}

    def step(self, me: str) -> None:
        view = self.view()
        todo = plan(me, view, assign(view, self.shards, self.standbys), self.ingesting[me])
        for k in todo.resign:
            del self.holders[k]
        for k in todo.campaign:
            self.holders.setdefault(k, me)  # the etcd transaction: create if absent
        self.ingesting[me] = set(todo.ingest)
        self.hot[me] &= todo.ingest

    def settle(self, rounds: int = 12) -> int:
        """Rounds of (every instance syncs, every instance steps) until nothing changes."""
        for n in range(rounds):
            before = repr((self.holders, self.hot, self.ingesting))
            for i in self.live:
                self.sync(i)
            for i in self.live:
                self.step(i)
            if repr((self.holders, self.hot, self.ingesting)) == before:
                return n
        raise AssertionError(f"not settled after {rounds} rounds: {self}")

    def assert_settled(self) -> None:
        wanted = self.wanted()
        assert self.holders == {k: r.leader for k, r in enumerate(wanted.shards)}
        for i in self.live:
            assert self.ingesting[i] == self.hot[i] == roles(wanted, i)

    def hot_copies(self, shard: int) -> list[str]:
        return [i for i in self.live if shard in self.hot[i]]


def operations(*names: str) -> st.SearchStrategy[list[tuple[str, int, str]]]:
    """Sequences of (operation, which live instance or shard, a newcomer's id)."""
    return st.lists(st.tuples(st.sampled_from(names), st.integers(0, 99), ids), max_size=40)


def apply(cluster: Cluster, operation: tuple[str, int, str]) -> None:
    name, pick, newcomer = operation
    live = cluster.live
    if name == "join":
        cluster.join(newcomer)
    elif name == "kill" and len(live) > 1:
        cluster.kill(live[pick % len(live)])
    elif name == "step":
        cluster.step(live[pick % len(live)])
    elif name == "sync":
        cluster.sync(live[pick % len(live)], pick % (cluster.shards + 1))


@settings(deadline=None)
@given(instance_lists, shard_counts, standby_counts, operations("join", "step", "sync"))
def test_joins_hand_shards_over_make_before_break(
    instances: list[str],
    shards: int,
    standbys: int,
    ops: list[tuple[str, int, str]],
) -> None:
    cluster = Cluster.started(instances, shards, standbys)
    for op in ops:
        apply(cluster, op)
        for k in range(shards):
            # the shard never loses its last synced copy, and is either published by a synced
            # leader or free with a synced instance about to take it
            assert cluster.hot_copies(k)
            holder = cluster.holders.get(k)
            assert holder is None or k in cluster.hot[holder]
    cluster.settle()
    cluster.assert_settled()


@settings(deadline=None)
@given(instance_lists, shard_counts, standby_counts, operations("join", "kill", "step", "sync"))
def test_the_cluster_settles_balanced_after_any_joins_and_deaths(
    instances: list[str],
    shards: int,
    standbys: int,
    ops: list[tuple[str, int, str]],
) -> None:
    cluster = Cluster(shards, standbys)  # not settled first: a cold start, all at once
    for i in instances:
        cluster.join(i)
    for op in ops:
        apply(cluster, op)
    cluster.settle()
    cluster.assert_settled()
    led = Counter(cluster.holders.values())
    assert max(led.values()) <= math.ceil(shards / len(cluster.live))


@settings(deadline=None)
@given(
    st.lists(ids, min_size=2, max_size=8, unique=True), shard_counts, st.integers(1, 3), st.data()
)
def test_after_a_death_every_shard_is_led_by_a_hot_standby_without_a_snapshot(
    instances: list[str], shards: int, standbys: int, data: st.DataObject
) -> None:
    cluster = Cluster.started(instances, shards, standbys)
    cluster.kill(data.draw(st.sampled_from(instances)))
    # Each takeover changes the view, which may make another hot standby the taker of a shard
    # still free: a few etcd round trips, each a new campaign, none waiting for a snapshot.
    for _ in range(3):
        for i in cluster.live:
            cluster.step(i)
    for k in range(shards):
        assert k in cluster.hot[cluster.holders[k]]


# --- examples ---


def test_pairs_map_to_shards_by_crc32() -> None:
    assert shard_of("BTCUSDT", 8) == zlib.crc32(b"BTCUSDT") % 8 == 3
    assert shard_of("ETHUSDT", 8) == 4
    assert shard_of("BTCUSDT", 1) == 0


def test_the_layout_is_part_of_the_protocol_between_versions() -> None:
    """Instances of two versions must compute the same roles during a rolling update: this
    layout changes only with the ranking (a deliberate, documented break)."""
    wanted = assign(ClusterView(frozenset("abc")), 8, 1)
    assert [(r.leader, r.standbys) for r in wanted.shards] == [
        ("a", ("b",)),
        ("c", ("b",)),
        ("b", ("c",)),
        ("b", ("c",)),
        ("c", ("a",)),
        ("a", ("c",)),
        ("b", ("a",)),
        ("a", ("b",)),
    ]


def test_three_replicas_lead_two_or_three_of_eight_shards_and_a_fourth_takes_two() -> None:
    view, three = settle(["a", "b", "c"], 8, 1)
    assert sorted(len(three.leading(i)) for i in "abc") == [2, 3, 3]
    four = assign(ClusterView(view.instances | {"d"}, view.holders, view.hot), 8, 1)
    assert [len(four.leading(i)) for i in "abcd"] == [2, 2, 2, 2]
    assert {k for k in range(8) if four.shards[k].leader != three.shards[k].leader} == four.leading(
        "d"
    )


def test_a_hand_over_waits_for_the_newcomer_to_be_hot() -> None:
    cluster = Cluster.started("abc", 8, 1)
    cluster.join("d")
    wanted = cluster.wanted()
    (moving, *_) = sorted(wanted.leading("d"))
    old_leader = cluster.holders[moving]

    cluster.step("d")  # d starts ingesting what it will lead
    assert wanted.leading("d") <= cluster.ingesting["d"]
    cluster.step(old_leader)
    assert cluster.holders[moving] == old_leader  # d is not in sync yet: keep publishing

    cluster.sync("d")
    cluster.step(old_leader)
    assert moving not in cluster.holders  # d is hot: hand over...
    assert moving in cluster.ingesting[old_leader]  # ...but stay in sync until d holds it
    cluster.step("d")
    assert cluster.holders[moving] == "d"

    cluster.settle()
    cluster.assert_settled()


def test_when_a_leader_dies_its_hot_standby_campaigns() -> None:
    cluster = Cluster.started("abc", 8, 1)
    standby = cluster.wanted().shards[0].standbys[0]
    cluster.kill(cluster.holders[0])
    view = cluster.view()
    assert 0 in plan(standby, view, assign(view, 8, 1)).campaign

"""Who leads and who stands by for each shard (DESIGN §9): pure code, no I/O, no clock, no await.

Every instance of a sharded service reads the same three things from etcd, a :class:`ClusterView`:
the live registrations, who holds each shard's leader key, and which shards each instance reports
in sync ("hot", a list in its registration). From that, :func:`assign` computes the wanted
:class:`Assignment`, the same on every instance, and :func:`plan` says what *this* instance does
about it now: which free shard keys to take, which held ones to hand over, which shards to ingest.

The assignment:

- **Leaders** are balanced: each live instance leads ``SHARDS // N`` shards or one more. Current
  key holders keep their shards up to that quota (so a change moves few leaderships: a join moves
  only the newcomer's share to it, a death only the dead instance's shards); one holding more
  keeps its best-ranked. The rest go to instances with room, first to one already hot for the
  shard (a standby: no snapshot), then by rendezvous ranking (a hash of shard and instance id),
  best pair first.
- **Standbys**: ``min(STANDBYS_PER_SHARD, N - 1)`` a shard, never its leader, each instance
  standing by for ``SHARDS * that // N`` shards or one more (the extra ones to those leading
  fewest, so what each instance ingests in all is balanced too). An instance already hot for a
  shard keeps standing by for it within that quota, then rendezvous ranking again. The first
  standby is the one that takes the shard over if its leader dies now.
- Everything is decided by sorting on ranks, then id: the result depends on the view's contents
  only, never on input order or on which instance computes it. Instances of two versions must
  agree during a rolling update, so the ranking is part of the protocol (a test pins a layout).

Handing a shard over is make-before-break: the wanted leader ingests the shard first; the holder
resigns only once the wanted leader reports it hot; an instance that loses a role keeps ingesting
until the shard's new leader holds the key and all its wanted standbys are hot. A free shard (its
leader died or resigned) is taken by its wanted leader if that one is hot, else by the best-ranked
hot instance (a standby: no snapshot, so the failover stays within the lease TTL), else by the
wanted leader, cold. Shutting down is not a rebalance: the runtime resigns everything at once and
the standbys take over.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain


def shard_of(symbol: str, shards: int) -> int:
    """The shard of a pair: stable across restarts and replicas (DESIGN §9)."""
    return zlib.crc32(symbol.encode()) % shards


@dataclass(frozen=True)
class ClusterView:
    """What every instance of one service reads from etcd."""

    instances: frozenset[str]  # ids of the live registrations
    holders: Mapping[int, str] = field(default_factory=dict)  # shard -> id holding its leader key
    hot: Mapping[str, Collection[int]] = field(default_factory=dict)  # id -> shards in sync

    def is_hot(self, instance: str, shard: int) -> bool:
        return shard in self.hot.get(instance, ())


@dataclass(frozen=True)
class ShardRoles:
    leader: str
    standbys: tuple[str, ...]  # the first takes over if the leader dies now


@dataclass(frozen=True)
class Assignment:
    shards: tuple[ShardRoles, ...]  # indexed by shard

    def leading(self, instance: str) -> frozenset[int]:
        return frozenset(k for k, roles in enumerate(self.shards) if roles.leader == instance)

    def standing_by(self, instance: str) -> frozenset[int]:
        return frozenset(k for k, roles in enumerate(self.shards) if instance in roles.standbys)


@dataclass(frozen=True)
class Plan:
    """What one instance does now; the runtime applies it and plans again on the next change."""

    campaign: frozenset[int]  # free shards whose leader key to take now
    resign: frozenset[int]  # held shards to hand over (their wanted leader is hot)
    ingest: frozenset[int]  # shards to keep in sync: held, wanted, or still covering a move
    stop: frozenset[int]  # shards ingested now that are no longer needed


def assign(view: ClusterView, shards: int, standbys_per_shard: int) -> Assignment:
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    if not view.instances:
        raise ValueError("no live instance to assign shards to")
    instances = sorted(view.instances)
    ranks = _Ranks(shards, instances)
    leaders = _leaders(instances, ranks, view.holders, view.hot)
    standbys = _standbys(instances, ranks, leaders, standbys_per_shard, view.hot)
    takers = _takers_if_leader_died(instances, ranks, leaders, standbys)
    return Assignment(
        tuple(
            # The instance that would take the shard over goes first: the free shard's new
            # wanted leader if it is a standby (so hot), else the best-ranked standby.
            ShardRoles(
                leader, tuple(sorted(chosen, key=lambda i: (i != takers[k], ranks.key(k, i))))
            )
            for k, (leader, chosen) in enumerate(zip(leaders, standbys, strict=True))
        )
    )


def plan(me: str, view: ClusterView, wanted: Assignment, ingesting: Collection[int] = ()) -> Plan:
    shards = len(wanted.shards)
    ranks = _Ranks(shards, view.instances)
    held = frozenset(k for k, holder in view.holders.items() if holder == me)
    campaign = frozenset(
        k for k in range(shards) if k not in view.holders and _taker(k, view, wanted, ranks) == me
    )
    # A held shard beyond SHARDS no longer exists in this configuration: let it go.
    resign = frozenset(
        k
        for k in held
        if k >= shards
        or (wanted.shards[k].leader != me and view.is_hot(wanted.shards[k].leader, k))
    )
    needed = (held - resign) | wanted.leading(me) | wanted.standing_by(me)
    covering = frozenset(k for k in ingesting if k not in needed and not _settled(k, view, wanted))
    ingest = needed | covering
    return Plan(campaign, resign, ingest, frozenset(ingesting) - ingest)


def _taker(shard: int, view: ClusterView, wanted: Assignment, ranks: _Ranks) -> str:
    """Who takes a free shard: its wanted leader if hot, else the best-ranked hot instance (a
    standby, or one still covering a move), else the wanted leader, cold."""
    leader = wanted.shards[shard].leader
    hot = [i for i in view.instances if view.is_hot(i, shard)]
    if leader in hot or not hot:
        return leader
    return min(hot, key=lambda i: ranks.key(shard, i))


def _settled(shard: int, view: ClusterView, wanted: Assignment) -> bool:
    """The shard's wanted leader holds its key and every role it wants is hot."""
    if shard >= len(wanted.shards):
        return True
    roles = wanted.shards[shard]
    return view.holders.get(shard) == roles.leader and all(
        view.is_hot(i, shard) for i in (roles.leader, *roles.standbys)
    )


class _Ranks:
    """Rendezvous ranks: a stable pseudo-random order of the instances for each shard."""

    def __init__(self, shards: int, instances: Iterable[str]) -> None:
        self.shards = shards
        self._rank = {
            (k, i): int.from_bytes(
                hashlib.blake2b(f"{k}/{i}".encode(), digest_size=8).digest(), "big"
            )
            for k in range(shards)
            for i in instances
        }

    def key(self, shard: int, instance: str) -> tuple[int, str]:
        """Sort key: best first; ties (practically never) by id."""
        return (-self._rank[shard, instance], instance)

    def best_first(self, pairs: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
        return sorted(pairs, key=lambda pair: (*self.key(*pair), pair[0]))


class _Quota:
    """Balanced counts: every member takes ``items // members``, and the first ``items %
    members`` members to ask for it one more."""

    def __init__(self, members: Sequence[str], items: int) -> None:
        self.floor, self.extra = divmod(items, len(members))
        self.count = dict.fromkeys(members, 0)

    def take(self, member: str) -> bool:
        count = self.count[member]
        if count > self.floor or (count == self.floor and self.extra == 0):
            return False
        if count == self.floor:
            self.extra -= 1
        self.count[member] = count + 1
        return True


def _leaders(
    instances: Sequence[str],
    ranks: _Ranks,
    holders: Mapping[int, str],
    hot: Mapping[str, Collection[int]],
) -> list[str]:
    """Holders keep their best-ranked shards up to their quota; the rest go to an instance with
    room that is hot for them (a standby: no snapshot), else best pair first."""
    quota = _Quota(instances, ranks.shards)
    leader: dict[int, str] = {}
    kept = [(k, i) for k, i in holders.items() if i in quota.count and 0 <= k < ranks.shards]
    warm = _hot_pairs(instances, ranks.shards, hot)
    every = [(k, i) for k in range(ranks.shards) for i in instances]
    for k, i in chain(ranks.best_first(kept), ranks.best_first(warm), ranks.best_first(every)):
        if k not in leader and quota.take(i):
            leader[k] = i
    # The quotas add up to the shard count, and anyone may lead any shard: none is left out.
    return [leader[k] for k in range(ranks.shards)]


def _hot_pairs(
    instances: Sequence[str], shards: int, hot: Mapping[str, Collection[int]]
) -> list[tuple[int, str]]:
    return [(k, i) for i in instances for k in hot.get(i, ()) if 0 <= k < shards]


def _takers_if_leader_died(
    instances: Sequence[str], ranks: _Ranks, leaders: Sequence[str], standbys: Sequence[list[str]]
) -> list[str | None]:
    """For each shard, its wanted leader once the cluster settled as wanted and then its leader
    died (None: no one left)."""
    hot: dict[str, set[int]] = {i: set() for i in instances}
    for k, (leader, chosen) in enumerate(zip(leaders, standbys, strict=True)):
        for i in (leader, *chosen):
            hot[i].add(k)
    takers: list[str | None] = [None] * len(leaders)
    for dead in set(leaders):
        rest = [i for i in instances if i != dead]
        if not rest:
            continue
        holders = {k: i for k, i in enumerate(leaders) if i != dead}
        after = _leaders(rest, ranks, holders, hot)
        for k, leader in enumerate(leaders):
            if leader == dead:
                takers[k] = after[k]
    return takers


def _standbys(
    instances: Sequence[str],
    ranks: _Ranks,
    leaders: Sequence[str],
    per_shard: int,
    hot: Mapping[str, Collection[int]],
) -> list[list[str]]:
    """Up to ``per_shard`` standbys a shard, none its leader, balanced over the instances; an
    instance already hot for a shard is preferred."""
    shards = len(leaders)
    slots = min(per_shard, len(instances) - 1)
    capacity = _standby_capacity(instances, leaders, shards * slots, ranks)
    chosen: list[list[str]] = [[] for _ in range(shards)]

    def can_join(k: int, i: str) -> bool:
        return i != leaders[k] and i not in chosen[k]

    warm = _hot_pairs(instances, shards, hot)
    every = [(k, i) for k in range(shards) for i in instances]
    for k, i in chain(ranks.best_first(warm), ranks.best_first(every)):
        if len(chosen[k]) < slots and capacity[i] > 0 and can_join(k, i):
            chosen[k].append(i)
            capacity[i] -= 1
    for k in range(shards):
        while len(chosen[k]) < slots:
            _add_standby(k, chosen, capacity, can_join, ranks, instances)
    return chosen


def _standby_capacity(
    instances: Sequence[str], leaders: Sequence[str], roles: int, ranks: _Ranks
) -> dict[str, int]:
    """``roles // N`` standby roles each; the remainder to those leading fewest (an instance
    leading many shards can stand by for few: it may not stand by for its own)."""
    floor, extra = divmod(roles, len(instances))
    leads = {i: 0 for i in instances}
    for leader in leaders:
        leads[leader] += 1
    # ties by shard 0's ranks: a fixed order of the instances
    by_load = sorted(instances, key=lambda i: (leads[i], ranks.key(0, i)))
    return {i: floor + (1 if n < extra else 0) for n, i in enumerate(by_load)}


def _add_standby(
    start: int,
    chosen: list[list[str]],
    capacity: dict[str, int],
    can_join: Callable[[int, str], bool],
    ranks: _Ranks,
    instances: Sequence[str],
) -> None:
    """One more standby for ``start`` when the greedy pass left it short: an instance with room
    joins some shard, whose standby moves to the next shard, and so on back to ``start`` (a
    breadth-first augmenting path, so the fewest standbys move)."""
    joins: dict[str, int] = {}  # instance -> the shard it would join
    left_by: dict[int, str] = {}  # shard -> the standby that would leave it
    frontier = [start]
    while frontier:
        reached: list[int] = []
        for k in frontier:
            for i in sorted(
                (i for i in instances if can_join(k, i)), key=lambda i: ranks.key(k, i)
            ):
                if i in joins:
                    continue
                joins[i] = k
                if capacity[i] > 0:
                    capacity[i] -= 1
                    _shift(i, start, joins, left_by, chosen)
                    return
                for other, standbys in enumerate(chosen):
                    if i in standbys and other != start and other not in left_by:
                        left_by[other] = i
                        reached.append(other)
        frontier = reached
    # No instance with room can be reached (never seen in the tests' layouts, balanced leaders
    # leave enough room): stand by beyond the share rather than leave the shard short.
    k = start
    i = min((i for i in instances if can_join(k, i)), key=lambda i: ranks.key(k, i))
    chosen[k].append(i)


def _shift(
    i: str, start: int, joins: dict[str, int], left_by: dict[int, str], chosen: list[list[str]]
) -> None:
    """Apply the augmenting path found, from the instance with room back to ``start``."""
    while True:
        k = joins[i]
        chosen[k].append(i)
        if k == start:
            return
        i = left_by[k]
        chosen[k].remove(i)

"""DESIGN §8 and §10 together: a new leader's deltas chain only from views it published.

Two orderbook replicas as in ``test_failover``; beside the books, the deltas are recorded. After
a kill -9 of the leader, the new leader's first message for each pair is a full view (seq 1,
no delta), and each of its deltas chains from its own full view of the seq before, never from
the old leader's.
"""

from __future__ import annotations

import time

import orjson
from feed_harness import Recorder, blocking
from test_failover import SYMBOLS, Pair, pair, steady_leader, wait_for_epoch_above

from marketpipe.infra.local import NatsCluster
from tests.eventually import eventually

__all__ = ["pair"]  # the fixture, from the failover tests


async def test_a_new_leader_chains_deltas_only_from_its_own_views(
    pair: Pair, nats_cluster: NatsCluster
) -> None:
    deltas = await Recorder.start(nats_cluster.urls, f"{pair.prefix}delta.orderbook.*")
    try:
        leader, _follower, old_epoch = await steady_leader(pair)
        await blocking(leader.process.kill)
        first = await wait_for_epoch_above(pair, old_epoch, within=10)

        def pairs_with_new_deltas() -> set[str]:
            return {
                d["symbol"]
                for at, _subject, raw in list(deltas.arrivals)
                if at >= first - 1 and (d := orjson.loads(raw))["epoch"] > old_epoch
            }

        # views and deltas of every pair from the new leader
        await eventually(lambda: len(pairs_with_new_deltas()) == SYMBOLS, within=15)
        views = {
            (m["symbol"], m["seq"]): m
            for at, m in pair.messages("orderbook", first - 0.001)
            if m["epoch"] > old_epoch
        }
        new_deltas = [
            d
            for at, _subject, raw in list(deltas.arrivals)
            if at >= first - 1 and (d := orjson.loads(raw))["epoch"] > old_epoch
        ]
        assert new_deltas, "the new leader published no delta"
        assert {s for s, seq in views if seq == 1} == {d["symbol"] for d in new_deltas}
        for delta in new_deltas:
            assert delta["seq"] >= 2, delta["symbol"]  # the first message of a term is full
            before = views[delta["symbol"], delta["seq"] - 1]
            assert delta["prevUpdateId"] == before["lastUpdateId"], delta["symbol"]
            assert delta["epoch"] == before["epoch"]
        assert time.time() - first < 30
    finally:
        await deltas.close()

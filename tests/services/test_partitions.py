"""A partitioned leader, healed (self-recovery; DESIGN §8 fencing), judged message by message.

Two replicas of a service on real etcd (``LEADER_TTL_SECONDS=3``), the NATS cluster and Redis.
Replica ``a`` reaches etcd, every NATS node and Redis only through proxies, and leads. Its proxies
then stall (connections stay open, nothing is forwarded either way) for 12 s: ``a`` is cut off
with whatever it had queued and in flight; ``b`` takes over. Then the partition heals.

- orderbook: after ``b``'s first book no book of an older epoch reaches NATS, for any pair; every
  book is the exchange's true book; Redis ends holding ``b``'s books.
- trades: every trade id of every pair exactly once, in order, across the partition, on NATS and
  in Redis's last-10 lists; and the same across resets of the leader's NATS connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from feed_harness import blocking
from test_failover import (
    Pair,
    assert_books_true,
    assert_trades_complete,
    replicas,
    steady_leader,
    trades_go_on_after_takeover,
)

from marketpipe.infra.local import EtcdServer, NatsCluster, RedisServer
from marketpipe.infra.proxy import FaultProxy
from marketpipe.infra.simulator import SimulatorProcess
from tests.eventually import eventually

TTL = 3
PARTITION_SECONDS = 12.0
RESETS = 30


class Partition:
    """Proxies in front of everything replica ``a`` talks to, except the exchange."""

    def __init__(self, cluster: NatsCluster, redis: RedisServer, etcd: EtcdServer) -> None:
        self.nats = [FaultProxy(target_port=port).start() for port in cluster.client_ports]
        self.redis = FaultProxy(target_port=redis.port).start()
        self.etcd = FaultProxy(target_port=etcd.port).start()
        self.all = [*self.nats, self.redis, self.etcd]

    def env(self) -> dict[str, str]:
        return {
            "nats_urls": ",".join(p.url("nats") for p in self.nats),
            "redis_url": self.redis.url("redis") + "/0",
            "etcd_endpoints": self.etcd.url("http"),
        }

    async def stall(self) -> None:
        await asyncio.gather(*(blocking(p.stall) for p in self.all))

    async def heal(self) -> None:
        await asyncio.gather(*(blocking(p.heal) for p in self.all))

    def stop(self) -> None:
        for proxy in self.all:
            proxy.stop()


@contextlib.asynccontextmanager
async def partitioned_pair(
    service: str,
    sim: SimulatorProcess,
    cluster: NatsCluster,
    redis_server: RedisServer,
    etcd: EtcdServer,
    logdir: Path,
    leader_first: str = "a",
) -> AsyncIterator[tuple[Pair, Partition]]:
    """Replica ``a`` behind the partition's proxies; ``leader_first`` leads at the start."""
    partition = Partition(cluster, redis_server, etcd)
    try:
        async with replicas(
            service,
            sim,
            cluster,
            redis_server,
            etcd,
            logdir,
            ttl=TTL,
            overrides={"a": partition.env()},
            leader_first=leader_first,
        ) as pair:
            yield pair, partition
    finally:
        partition.stop()


@pytest.fixture
async def partitioned(
    request: pytest.FixtureRequest,
    ha_sim: SimulatorProcess,
    isolated_cluster: NatsCluster,
    redis_server: RedisServer,
    fresh_etcd: EtcdServer,
    tmp_path: Path,
) -> AsyncIterator[tuple[Pair, Partition]]:
    """``request.param``: (service, the replica that leads first)."""
    service, leader_first = request.param
    async with partitioned_pair(
        service, ha_sim, isolated_cluster, redis_server, fresh_etcd, tmp_path, leader_first
    ) as running:
        yield running


def first_arrival(messages: list[tuple[float, dict[str, Any]]], epoch: int) -> float:
    return min(at for at, m in messages if m["epoch"] == epoch)


@pytest.mark.parametrize("partitioned", [("orderbook", "a")], indirect=True)
async def test_orderbook_partitioned_leader_heals_without_one_old_book_after_the_new(
    partitioned: tuple[Pair, Partition],
) -> None:
    pair, partition = partitioned
    leader, follower, old_epoch = await steady_leader(pair)
    assert leader.name == "a"

    cut = time.time()
    await partition.stall()
    await eventually(
        lambda: any(m["epoch"] > old_epoch for _, m in pair.messages("orderbook", cut)),
        within=TTL + 5,
    )
    took_over = first_arrival(pair.messages("orderbook", cut), follower.epoch)
    await asyncio.sleep(max(0.0, cut + PARTITION_SECONDS - time.time()))  # the partition lasts
    await partition.heal()
    healed = time.time()
    await asyncio.sleep(3.0)  # whatever the old leader still had would arrive by now

    messages = pair.messages("orderbook")
    new_epoch = follower.epoch
    first_new = first_arrival(messages, new_epoch)
    late = [
        (at, m["symbol"], m["epoch"])
        for at, m in messages
        if at > first_new and m["epoch"] < new_epoch
    ]
    assert late == [], f"{len(late)} books of an older epoch after the new leader's first"
    assert took_over - cut <= TTL + 1.5, f"took over {took_over - cut:.2f}s after the cut"
    assert not await blocking(lambda: leader.leading), "the healed old leader leads again"
    assert pair.messages("orderbook", healed), "books stopped after the heal"

    await assert_books_true(pair, new_epoch)
    for symbol in {m["symbol"] for _, m in messages}:
        cached = await pair.redis.get(f"{pair.redis_prefix}orderbook:{symbol}")
        assert cached is not None and orjson.loads(cached)["epoch"] == new_epoch, symbol


@pytest.mark.parametrize("partitioned", [("trades", "a")], indirect=True)
async def test_trades_partitioned_leader_heals_without_a_lost_or_repeated_trade(
    partitioned: tuple[Pair, Partition],
) -> None:
    pair, partition = partitioned
    leader, follower = await pair.leader()
    assert leader.name == "a"
    await eventually(lambda: len(pair.messages("trades")) > 50, within=30)

    await partition.stall()
    await eventually(lambda: blocking(lambda: follower.leading), within=TTL + 5)
    await asyncio.sleep(PARTITION_SECONDS - TTL)  # the partition lasts
    await partition.heal()
    await asyncio.sleep(3.0)  # time for the healed old leader to lead again, were it to
    assert not await blocking(lambda: leader.leading), "the healed old leader leads again"
    await assert_trades_complete(pair)


@pytest.mark.parametrize("partitioned", [("trades", "b")], indirect=True)
async def test_trades_follower_that_lost_nats_repeats_nothing_when_it_takes_over(
    partitioned: tuple[Pair, Partition],
) -> None:
    """The follower learns what was published from NATS: while its own connection is down it
    misses some. Taking over soon after, it must not publish those trades again."""
    pair, partition = partitioned
    leader, follower = await pair.leader()
    assert follower.name == "a"
    await eventually(lambda: len(pair.messages("trades")) > 50, within=30)

    await asyncio.gather(*(blocking(p.refuse) for p in partition.nats))
    await asyncio.sleep(1.5)  # trades go on meanwhile; the follower sees none of them
    await asyncio.gather(*(blocking(p.heal) for p in partition.nats))
    await eventually(
        lambda: blocking(lambda: follower.metric("marketpipe_nats_connected") == 1),
        what="the follower reconnected",
    )
    newest = newest_trades(pair)
    await eventually(lambda: stored_up_to(pair, newest))  # the leader's Redis writes of those

    await blocking(leader.process.kill)
    await trades_go_on_after_takeover(follower, pair, within=TTL + 5)
    await assert_trades_complete(pair)


@pytest.mark.parametrize("partitioned", [("trades", "a")], indirect=True)
async def test_trades_leader_nats_resets_lose_and_repeat_no_trade(
    partitioned: tuple[Pair, Partition],
) -> None:
    """Resets of the leader's own NATS connection: trades it had handed to the socket may never
    have reached the server, or reached it with the echo lost. It must find out which, and
    publish each missing trade once, in order."""
    pair, partition = partitioned
    leader, _ = await pair.leader()
    assert leader.name == "a"
    await eventually(lambda: len(pair.messages("trades")) > 50, within=30)

    for _ in range(RESETS):
        published = len(pair.messages("trades"))
        await asyncio.gather(*(blocking(p.reset) for p in partition.nats))
        # the next reset once trades flow again (each reset lands in a stream of trades)
        await eventually(lambda n=published: len(pair.messages("trades")) > n + 5, within=30)
    assert await blocking(lambda: leader.leading), "a reset cost the leader its lease"
    await assert_trades_complete(pair)


def newest_trades(pair: Pair) -> dict[str, int]:
    """The newest trade id of each pair on NATS so far."""
    newest: dict[str, int] = {}
    for _, message in pair.messages("trades"):
        newest[message["s"]] = max(newest.get(message["s"], 0), message["t"])
    return newest


async def stored_up_to(pair: Pair, newest: dict[str, int]) -> bool:
    """Redis holds, for each pair, a trade at least as new as ``newest`` says."""
    for symbol, trade_id in newest.items():
        head = await pair.redis.lindex(f"{pair.redis_prefix}trades:{symbol}", 0)
        if head is None or orjson.loads(head)["t"] < trade_id:
            return False
    return True

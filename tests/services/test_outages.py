"""The orderbook through long outages of what it depends on (issue: self-recovery), every book
judged against the exchange's truth at its update id, as in test_orderbook_e2e:

- Redis down 30 s (killed), and Redis stalled 30 s (SIGSTOP): Redis is a cache (DESIGN §3, §6),
  so books keep flowing on NATS at the same pace; once Redis answers, it is refilled.
- the exchange unreachable 60 s (a proxy refuses REST and streams): no book may be published
  that is not provably in sync; once it answers, every book is live and exact again.
- etcd down 30 s (two replicas): the leader cannot renew its lease, so it stops publishing at
  its lease deadline (DESIGN §6), nobody leads without etcd, and a leader publishes again soon
  after etcd is back.

Each test prints its recovery figures (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from feed_harness import blocking
from test_failover import (
    SYMBOLS,
    Pair,
    assert_books_true,
    replicas,
    steady_leader,
    wait_for_epoch_above,
)
from test_orderbook_e2e import Rig, running_rig

from marketpipe.infra.local import EtcdServer, NatsCluster, Process, RedisServer
from marketpipe.infra.proxy import FaultProxy
from marketpipe.infra.simulator import SimulatorProcess
from tests.eventually import eventually

OUTAGE_SECONDS = 30.0
EXCHANGE_OUTAGE_SECONDS = 60.0


@pytest.fixture
def paused_sim() -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(
        symbols=60,
        seed=29,
        extra_args=["--levels", "200", "--paused", "--weight-limit", "1000000"],
    ).start()
    yield sim
    sim.stop()


@pytest.fixture
async def rig(
    paused_sim: SimulatorProcess,
    nats_cluster: NatsCluster,
    fresh_redis: RedisServer,
    tmp_path: Path,
) -> AsyncIterator[Rig]:
    async with running_rig(paused_sim, nats_cluster, fresh_redis, tmp_path) as running:
        everyone = set(running.symbols)
        await running.drive_until(lambda: running.recorder.live() == everyone, within=60)
        await running.drive_until(running.caught_up, within=20)
        yield running


async def books_flow_through(rig: Rig, seconds: float) -> None:
    """Drive the market for ``seconds``; every pair keeps publishing all along."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        before = len(rig.recorder.books)
        await rig.step_for(2.0)
        published = {m["symbol"] for _, m in rig.recorder.books[before:]}
        assert published == set(rig.symbols), "some pairs stopped publishing"


async def refilled_after(rig: Rig) -> float:
    """Seconds until Redis holds the last published book of every pair again."""
    started = time.monotonic()
    await rig.drive_until(rig.caught_up, within=30)
    await eventually(rig.redis_refilled, 30, "Redis refilled")
    return time.monotonic() - started


async def test_redis_down_30s_streaming_goes_on_and_redis_is_refilled(
    rig: Rig, fresh_redis: RedisServer
) -> None:
    assert fresh_redis.process is not None
    fresh_redis.process.kill()
    await books_flow_through(rig, OUTAGE_SECONDS)
    fresh_redis.process.start()
    took = await refilled_after(rig)
    print(f"redis down {OUTAGE_SECONDS:.0f}s: refilled {took:.2f}s after it came back")
    assert rig.check_every_book() > 0
    await rig.check_quiescent()


async def test_redis_stalled_30s_streaming_goes_on_and_redis_is_refilled(
    rig: Rig, fresh_redis: RedisServer
) -> None:
    assert fresh_redis.process is not None
    fresh_redis.process.pause()
    try:
        await books_flow_through(rig, OUTAGE_SECONDS)
    finally:
        fresh_redis.process.resume()
    took = await refilled_after(rig)
    print(f"redis stalled {OUTAGE_SECONDS:.0f}s: current again {took:.2f}s after the resume")
    assert rig.check_every_book() > 0
    await rig.check_quiescent()


@pytest.fixture
def exchange_proxy(paused_sim: SimulatorProcess) -> Iterator[FaultProxy]:
    proxy = FaultProxy(target_port=paused_sim.port).start()
    yield proxy
    proxy.stop()


async def test_exchange_unreachable_60s_no_book_unproven_then_all_live_again(
    paused_sim: SimulatorProcess,
    exchange_proxy: FaultProxy,
    nats_cluster: NatsCluster,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    env = {
        "MARKETPIPE_BINANCE_REST_URL": exchange_proxy.url("http"),
        "MARKETPIPE_BINANCE_WS_URL": exchange_proxy.url("ws"),
    }
    async with running_rig(paused_sim, nats_cluster, redis_server, tmp_path, env) as rig:
        everyone = set(rig.symbols)
        await rig.drive_until(lambda: rig.recorder.live() == everyone, within=60)
        await rig.drive_until(rig.caught_up, within=20)

        await blocking(exchange_proxy.refuse)
        cut = time.monotonic()
        await rig.drive_until(lambda: not rig.recorder.live(), within=30)
        dark = time.monotonic() - cut
        await rig.step_for(EXCHANGE_OUTAGE_SECONDS - dark)
        await blocking(exchange_proxy.heal)
        healed = time.monotonic()
        await rig.drive_until(lambda: rig.recorder.live() == everyone, within=60)
        live_again = time.monotonic() - healed
        await rig.drive_until(rig.caught_up, within=30)
        print(
            f"exchange unreachable {EXCHANGE_OUTAGE_SECONDS:.0f}s: books stopped within "
            f"{dark:.2f}s, all {len(everyone)} live again {live_again:.2f}s after it answered"
        )
        assert rig.check_every_book() > 0
        await rig.check_quiescent()


async def test_etcd_down_30s_no_leader_without_it_then_one_again(
    ha_sim: SimulatorProcess,
    nats_cluster: NatsCluster,
    redis_server: RedisServer,
    fresh_etcd: EtcdServer,
    tmp_path: Path,
) -> None:
    async with replicas(
        "orderbook", ha_sim, nats_cluster, redis_server, fresh_etcd, tmp_path
    ) as pair:
        await _etcd_outage(pair, fresh_etcd.process)


async def _etcd_outage(pair: Pair, etcd: Process | None) -> None:
    assert etcd is not None
    leader, follower, old_epoch = await steady_leader(pair)
    ttl = 2  # test_failover's LEADER_TTL_SECONDS
    killed = time.time()
    await blocking(etcd.kill)
    await asyncio.sleep(OUTAGE_SECONDS)  # the outage lasts this long
    during = pair.messages("orderbook", killed + ttl + 0.2)
    assert during == [], f"{len(during)} books published without a lease"
    assert not await blocking(lambda: leader.leading)
    assert not await blocking(lambda: follower.leading)
    await blocking(etcd.start)
    back = time.time()
    first = await wait_for_epoch_above(pair, old_epoch, within=30)
    new_leader, _ = await pair.leader()
    print(
        f"etcd down {OUTAGE_SECONDS:.0f}s: a leader published {first - back:.2f}s after it was back"
    )
    epoch = new_leader.epoch
    await eventually(  # every pair published by the new leader
        lambda: (
            len({m["symbol"] for _, m in pair.messages("orderbook", first) if m["epoch"] == epoch})
            == SYMBOLS
        )
    )
    await assert_books_true(pair, new_leader.epoch)

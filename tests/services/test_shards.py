"""Pairs sharded over replicas (DESIGN §9), end to end: 300 pairs, 8 shards, real etcd, the NATS
cluster and the simulator.

Three replicas settle with every pair published by exactly one leader and each replica leading
2-3 shards; a kill -9 of one replica has every pair published again within TTL + 1 s (its shards
are taken by hot standbys); a fourth replica joining takes its share make-before-break: no pair
goes unpublished longer than a failover and no pair ever sees two publishers interleave.
``marketpipe status --json`` agrees with what NATS shows (the ``shard`` field, the epochs). The
same for ``trades``: no trade lost or duplicated across the failover and the rebalance.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from feed_harness import Recorder, blocking

from marketpipe.infra.local import EtcdServer, NatsCluster, Process, RedisServer
from marketpipe.infra.services import metric, service_env, start_service
from marketpipe.infra.simulator import SimulatorProcess
from tests.eventually import eventually

PAIRS = 300
SHARDS = 8
TTL = 2
SETTINGS: dict[str, dict[str, Any]] = {"DEFAULT": {"MaxSpreadPct": 2.0, "Depth": 20}}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    simulator = SimulatorProcess(
        symbols=PAIRS, seed=31, extra_args=["--levels", "100", "--weight-limit", "10000000"]
    ).start()
    simulator.admin("PUT", "settings", SETTINGS)
    yield simulator
    simulator.stop()


def shard_of(symbol: str) -> int:
    return zlib.crc32(symbol.encode()) % SHARDS


@dataclass
class Fleet:
    """Replicas of one sharded service, and a recorder of everything they publish."""

    service: str
    channel: str
    env: dict[str, str]
    logdir: Path
    recorder: Recorder
    prefix: str
    replicas: dict[str, Process] = field(default_factory=dict)

    async def add(self, name: str) -> None:
        (self.logdir / name).mkdir()
        process = await blocking(start_service, self.service, self.env, self.logdir / name)
        self.replicas[name] = process

    def messages(self, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        head = f"{self.prefix}{self.channel}."
        return [
            (at, orjson.loads(data))
            for at, subject, data in list(self.recorder.arrivals)
            if at >= since and subject.startswith(head)
        ]

    def symbol_of(self, message: dict[str, Any]) -> str:
        return str(message["symbol"] if "symbol" in message else message["s"])

    async def leading(self) -> dict[str, int]:
        return {
            name: int(await blocking(metric, p, "marketpipe_shards_leading"))
            for name, p in self.replicas.items()
            if p.running
        }

    async def settled(self, live: int, within: float = 90) -> None:
        """Every shard led by exactly one live replica, spread evenly."""
        leading: dict[str, int] = {}

        async def even() -> bool:
            leading.clear()
            leading.update(await self.leading())
            counts = sorted(leading.values())
            return len(leading) == live and sum(counts) == SHARDS and counts[-1] - counts[0] <= 1

        await eventually(even, within, lambda: f"settled, leading: {leading}")

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "marketpipe", "status", "--json"],
            env={**os.environ, "MARKETPIPE_ETCD_ENDPOINTS": self.env["MARKETPIPE_ETCD_ENDPOINTS"]},
            capture_output=True,
            check=True,
            timeout=30,
        )
        return dict(json.loads(out.stdout)[self.service])


@pytest.fixture
async def make_fleet(
    sim: SimulatorProcess,
    nats_cluster: NatsCluster,
    redis_server: RedisServer,
    fresh_etcd: EtcdServer,
    tmp_path: Path,
) -> AsyncIterator[Any]:
    fleets: list[Fleet] = []

    async def make(service: str) -> Fleet:
        prefix = f"s{uuid.uuid4().hex[:8]}."
        channel = "orderbook" if service == "orderbook" else service
        recorder = await Recorder.start(nats_cluster.urls, f"{prefix}{channel}.*")
        env = service_env(
            sim,
            nats_cluster,
            redis_server,
            etcd_endpoints=fresh_etcd.url,
            leader_ttl_seconds=str(TTL),
            subject_prefix=prefix,
            settings_url=sim.settings_url,
            shards=str(SHARDS),
            standbys_per_shard="1",
            rest_weight_limit="1000000",
            rest_weight_share="1.0",
            snapshot_limit="100",
            snapshot_limit_others="100",
            streams_per_connection="200",
        )
        fleet = Fleet(service, channel, env, tmp_path / service, recorder, prefix)
        fleet.logdir.mkdir()
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.recorder.close()
        for process in fleet.replicas.values():
            await blocking(process.stop)


def assert_one_publisher_at_a_time(fleet: Fleet, since: float = 0.0) -> None:
    """Per pair: epochs never go back (no two publishers interleave), every message carries
    its pair's shard, and each epoch belongs to one shard."""
    newest: dict[str, int] = {}
    shard_of_epoch: dict[int, int] = {}
    for _, message in fleet.messages(since):
        symbol, epoch = fleet.symbol_of(message), message["epoch"]
        assert message["shard"] == shard_of(symbol), (symbol, message["shard"])
        assert shard_of_epoch.setdefault(epoch, message["shard"]) == message["shard"], epoch
        assert epoch >= newest.get(symbol, 0), f"{symbol}: epoch {epoch} after {newest[symbol]}"
        newest[symbol] = epoch


def where_apart(fleet: Fleet, symbol: str, got: list[dict[str, Any]], truth: list[int]) -> str:
    """Where the trades seen first differ from the truth: (id, epoch) around it, and what each
    replica logged about the pair."""
    ids = [m["t"] for m in got]
    at = next((i for i, (a, b) in enumerate(zip(ids, truth, strict=False)) if a != b), len(ids))
    around = [(m["t"], m["epoch"]) for m in got[max(0, at - 3) : at + 3]]
    lines = [f"first difference at {at}: got (id, epoch) {around}, truth {truth[at - 3 : at + 3]}"]
    for name in fleet.replicas:
        log_path = fleet.logdir / name / f"{fleet.service}.log"
        if log_path.exists():
            lines += [
                f"{name}: {line}" for line in log_path.read_text().splitlines() if symbol in line
            ]
    return "\n".join(lines[:60])


def longest_silence(fleet: Fleet, since: float, until: float) -> tuple[float, str]:
    """The longest time any pair went without a message between ``since`` and ``until``."""
    last: dict[str, float] = defaultdict(lambda: since)
    worst = (0.0, "")
    for at, message in fleet.messages(since):
        symbol = fleet.symbol_of(message)
        worst = max(worst, (at - last[symbol], symbol))
        last[symbol] = at
    for symbol, at in last.items():
        worst = max(worst, (until - at, symbol))
    return worst


async def test_orderbook_sharded_over_replicas_failover_and_rebalance(make_fleet: Any) -> None:
    fleet: Fleet = await make_fleet("orderbook")
    await asyncio.gather(fleet.add("r1"), fleet.add("r2"), fleet.add("r3"))
    await fleet.settled(live=3)
    assert sorted((await fleet.leading()).values()) in ([2, 3, 3], [2, 2, 3])
    start = time.time()
    await eventually(
        lambda: len({fleet.symbol_of(m) for _, m in fleet.messages(start)}) == PAIRS, within=30
    )

    # status --json says who leads what: it matches the epochs and shards seen on NATS
    status = await blocking(fleet.status)
    assert len(status["instances"]) == 3
    seen: dict[int, set[int]] = defaultdict(set)
    for _, message in fleet.messages(start):
        seen[message["shard"]].add(message["epoch"])
    for k in range(SHARDS):
        shard = status["shards"][str(k)]
        assert seen[k] == {shard["epoch"]}, (k, seen[k], shard)
        assert shard["leader"] and shard["standby"] and shard["leader"] not in shard["standby"]
    assert sum(s["pairs"] for s in status["shards"].values()) == PAIRS

    # kill -9 one replica: its shards are published again within TTL + 1 s
    victim = "r2"
    killed = time.time()
    await blocking(fleet.replicas[victim].kill)
    await fleet.settled(live=2)
    await asyncio.sleep(TTL + 1.5)  # a window after the kill over which each pair's silence counts
    gap, symbol = longest_silence(fleet, killed, time.time())
    print(f"kill -9 of a replica: longest silence of a pair {gap:.2f}s (TTL {TTL}s)")
    assert gap <= TTL + 1, f"{symbol} unpublished for {gap:.2f}s after the kill"

    # a fourth replica joins: shards move to it make-before-break
    joined = time.time()
    await fleet.add("r4")
    await fleet.settled(live=3)
    took = time.time() - joined
    weight = await blocking(
        metric, fleet.replicas["r4"], "marketpipe_rest_weight_spent_total", endpoint="depth"
    )
    await asyncio.sleep(1.0)  # the window after the rebalance over which silences count
    gap, symbol = longest_silence(fleet, joined, time.time())
    print(
        f"a fourth replica joined: took its shards {took:.2f}s after it was started, "
        f"spending {weight:.0f} depth weight; longest silence of a pair {gap:.2f}s"
    )
    assert gap <= TTL + 1, f"{symbol} unpublished for {gap:.2f}s during the rebalance"
    assert_one_publisher_at_a_time(fleet)
    leading = await fleet.leading()
    assert sorted(leading.values()) in ([2, 3, 3], [2, 2, 3])
    assert leading["r4"] >= 2  # it took its share


async def test_trades_sharded_no_trade_lost_or_repeated_across_failover_and_rebalance(
    make_fleet: Any, sim: SimulatorProcess
) -> None:
    fleet: Fleet = await make_fleet("trades")
    await asyncio.gather(fleet.add("r1"), fleet.add("r2"), fleet.add("r3"))
    await fleet.settled(live=3)
    await eventually(lambda: len(fleet.messages()) > 500, within=30)
    await blocking(fleet.replicas["r2"].kill)
    await fleet.settled(live=2)
    await asyncio.sleep(TTL)  # trades go on a while on two replicas, the dead one's lease expired
    await fleet.add("r4")
    await fleet.settled(live=3)
    await asyncio.sleep(2.0)  # and a while after the rebalance, for a second publisher to show
    assert_one_publisher_at_a_time(fleet)

    await blocking(sim.pause)
    try:
        await fleet.recorder.wait_quiet(1.0)
        by_symbol: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for _, message in fleet.messages():
            by_symbol[message["s"]].append(message)
        assert len(by_symbol) > PAIRS // 2
        for symbol, got in by_symbol.items():
            ids = [m["t"] for m in got]
            rows = await blocking(sim.admin, "GET", "trades", symbol=symbol)
            truth = [r["t"] for r in rows if r["t"] >= ids[0]]
            assert ids == truth, f"{symbol}: trades lost, repeated or reordered\n" + where_apart(
                fleet, symbol, got, truth
            )
    finally:
        await blocking(sim.resume)

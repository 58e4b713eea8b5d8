"""Benchmark: the exchange's pairs sharded over 1, 2 and 3 ``orderbook`` replicas (DESIGN §9).

    .venv/bin/python -m bench.bench_shards [--pairs 2000] [--replicas 1,2,3] [--shards 8]
        [--standbys 1] [--seconds 30] [--big-pairs 4000] [--no-big]

One simulator (``--pairs`` symbols x 10 diffs/s), a 1-node NATS server, Redis and etcd on
loopback. For each replica count R: R orderbook instances with ``SHARDS`` and
``STANDBYS_PER_SHARD``; once every shard has settled (each led by one instance, all books
live), the CPU of each replica over ``--seconds`` (``/proc/<pid>/stat``, 100 % = one core), and
"beyond the throttle" latency (as in ``bench_orderbook``: received - max(E, previous message of
the pair + interval)) on a sample of pairs. The ratio of the busiest replica's CPU to the single
instance's (measured in the same run) is what sharding buys: each instance ingests only the
shards it leads or stands by for (with one standby and R = 2, that is every shard: the cut is in
publishing only).

Then ``--big-pairs`` (two exchanges' worth) over the largest R: the p99 beyond the throttle and
what limits it (this machine's cores: the simulator alone needs about a core per 4000 pairs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import nats

from bench.bench_orderbook import INTERVAL_MS, Samples, header_event_time
from bench.procstat import cpu_seconds, machine_busy_seconds, percentile
from marketpipe.infra.local import EtcdServer, NatsCluster, Process, RedisServer
from marketpipe.infra.services import metric, service_env, service_port, start_service
from marketpipe.infra.simulator import SimulatorProcess

WEIGHT_LIMIT = 10_000_000
SAMPLE_EVERY = 10
SETTLE_SECONDS = 5


async def settled(replicas: list[Process], shards: int, within: float = 600) -> float:
    """Seconds until each shard is led by one replica and every replica is ready."""
    began = time.monotonic()
    while True:
        leading = [
            await asyncio.to_thread(metric, p, "marketpipe_shards_leading") for p in replicas
        ]
        synced = [await asyncio.to_thread(metric, p, "marketpipe_books_synced") for p in replicas]
        tracked = [await asyncio.to_thread(metric, p, "marketpipe_books_tracked") for p in replicas]
        if sum(leading) == shards and synced == tracked and max(leading) - min(leading) <= 1:
            return time.monotonic() - began
        if time.monotonic() - began > within:
            raise SystemExit(f"not settled after {within} s: leading {leading}")
        await asyncio.sleep(0.5)


async def measure(
    sim: SimulatorProcess,
    cluster: NatsCluster,
    redis_server: RedisServer,
    etcd: EtcdServer,
    pairs: list[str],
    count: int,
    args: argparse.Namespace,
    logdir: Path,
) -> dict[str, Any]:
    samples = Samples()
    nc = await nats.connect(servers=cluster.urls, pending_size=512 * 1024 * 1024)

    async def on_message(msg: Any) -> None:
        samples.add(msg.subject, header_event_time(msg.data), time.time())

    prefix = f"r{count}."
    for symbol in pairs[::SAMPLE_EVERY]:
        await nc.subscribe(f"{prefix}orderbook.{symbol}", cb=on_message, pending_msgs_limit=10**7)
    env = service_env(
        sim,
        cluster,
        redis_server,
        etcd_endpoints=etcd.url,
        subject_prefix=prefix,
        shards=str(args.shards),
        standbys_per_shard=str(args.standbys),
        rest_weight_limit=str(WEIGHT_LIMIT),
        streams_per_connection="200",
        settings_url=sim.settings_url,
    )
    replicas: list[Process] = []
    try:
        for n in range(count):
            (logdir / f"{count}-{n}").mkdir(parents=True, exist_ok=True)
            replicas.append(
                await asyncio.to_thread(
                    start_service, "orderbook", env, logdir / f"{count}-{n}", 900
                )
            )
        took = await settled(replicas, args.shards)
        await asyncio.sleep(SETTLE_SECONDS)
        pids = [p.proc.pid for p in replicas if p.proc is not None]
        before = [cpu_seconds(pid) for pid in pids]
        sim_before, machine_before = cpu_seconds(sim.pid), machine_busy_seconds()
        started = time.monotonic()
        samples.counting = True
        await asyncio.sleep(args.seconds)
        samples.counting = False
        elapsed = time.monotonic() - started
        cpu = [(cpu_seconds(pid) - b) / elapsed for pid, b in zip(pids, before, strict=True)]
        busy, total = (b - a for a, b in zip(machine_before, machine_busy_seconds(), strict=True))
        leading = [
            int(await asyncio.to_thread(metric, p, "marketpipe_shards_leading")) for p in replicas
        ]
        ingesting = [
            int(await asyncio.to_thread(metric, p, "marketpipe_books_tracked")) for p in replicas
        ]
    finally:
        await nc.close()
        for process in replicas:
            await asyncio.to_thread(process.stop)
    beyond = [v for _, v in samples.beyond]
    return {
        "cpu": cpu,
        "settled": took,
        "leading": leading,
        "ingesting": ingesting,
        "p50": percentile(beyond, 0.5) * 1000,
        "p99": percentile(beyond, 0.99) * 1000,
        "simulator": (cpu_seconds(sim.pid) - sim_before) / elapsed,
        "machine_busy": busy / total,
        "ports": [service_port(p) for p in replicas],
    }


async def run_market(args: argparse.Namespace, count_pairs: int, counts: list[int]) -> None:
    logdir = Path(args.logdir) / str(count_pairs)
    cluster = NatsCluster(size=1).start()
    redis_server = RedisServer().start()
    etcd = EtcdServer().start()
    sim = SimulatorProcess(
        symbols=count_pairs,
        seed=1,
        extra_args=["--levels", "1000", "--rate", "10", "--weight-limit", str(WEIGHT_LIMIT)],
    )
    await asyncio.to_thread(sim.start, 240)
    try:
        pairs = [s["symbol"] for s in await asyncio.to_thread(sim.admin, "GET", "symbols")]
        print(
            f"\n{len(pairs)} pairs x 10 diffs/s, SHARDS {args.shards}, "
            f"STANDBYS_PER_SHARD {args.standbys}, {args.seconds:.0f} s measured per replica count"
        )
        single: float | None = None
        for count in counts:
            result = await measure(sim, cluster, redis_server, etcd, pairs, count, args, logdir)
            busiest = max(result["cpu"])
            single = single or busiest
            per = ", ".join(f"{c:.0%}" for c in result["cpu"])
            print(
                f"  {count} replica(s): CPU per replica {per} (busiest x{busiest / single:.2f} "
                f"the single instance's); leading {result['leading']} shards, ingesting "
                f"{result['ingesting']} pairs; settled in {result['settled']:.1f} s"
            )
            print(
                f"      beyond the throttle p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms "
                f"(target p99 <= 20 ms: {'met' if result['p99'] <= 20 else 'MISSED'}); "
                f"simulator {result['simulator']:.0%} of a core, the machine's "
                f"{os.cpu_count()} cores {result['machine_busy']:.0%} busy"
            )
    finally:
        await asyncio.to_thread(sim.stop)
        etcd.stop()
        redis_server.stop()
        cluster.stop()


async def main(args: argparse.Namespace) -> None:
    counts = [int(c) for c in args.replicas.split(",")]
    await run_market(args, args.pairs, counts)
    if args.big:
        await run_market(args, args.big_pairs, [max(counts)])
    print(f"\nlogs: {args.logdir}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--replicas", default="1,2,3", help="replica counts to measure")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--standbys", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--big-pairs", type=int, default=4000)
    parser.add_argument("--no-big", dest="big", action="store_false")
    parser.add_argument("--logdir", default="/tmp/marketpipe-bench-shards")
    return parser.parse_args()


if __name__ == "__main__":
    assert INTERVAL_MS == 100
    asyncio.run(main(parse_args()))

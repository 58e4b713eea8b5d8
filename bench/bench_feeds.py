"""The trades, tickers and markets services together at 2000 pairs, against a bare client.

    .venv/bin/python -m bench.bench_feeds [--pairs 2000] [--rate 10] [--seconds 30]

One simulator process (``--pairs`` symbols, ``--rate`` book steps per second per pair: a trade
sweep on about one step in four, so this is as busy as it gets: every pair trading several
times a second), a 1-node NATS server and Redis on loopback.

1. Baseline: a bare client in this process reads every ``<pair>@trade`` and ``<pair>@ticker``
   stream straight from the simulator (aiohttp, orjson, 200 streams per connection) and records
   exchange event time ``E`` -> receive time: the floor set by the simulator and the machine.
2. The three services as subprocesses, leaders (no etcd), publishing to NATS and Redis; a NATS
   subscriber in this process records ``E`` -> receive time per message (for ``markets.DATA``:
   the newest ``E`` in the message). CPU share of each process comes from ``/proc/<pid>/stat``
   over the measured window (100% = one core).

Prints, per channel: messages/s, p50/p99 latency, and the p99 ratio against the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import orjson

from bench.procstat import cpu_seconds
from marketpipe.infra.local import NatsCluster, RedisServer
from marketpipe.infra.services import service_env, start_service
from marketpipe.infra.simulator import SimulatorProcess

SERVICES = ("trades", "tickers", "markets")
STREAMS_PER_CONNECTION = 200


@dataclass
class Latencies:
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    counting: bool = False

    def add(self, channel: str, event_ms: int, now: float) -> None:
        if self.counting:
            self.samples[channel].append(now - event_ms / 1000)

    def line(self, channel: str, seconds: float, baseline_p99: float | None) -> str:
        values = sorted(self.samples.get(channel, []))
        if not values:
            return f"  {channel:<16} no messages"
        p50 = statistics.median(values) * 1000
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))] * 1000
        ratio = f"  p99 x{p99 / baseline_p99:.1f} baseline" if baseline_p99 else ""
        return (
            f"  {channel:<16} {len(values) / seconds:9.0f} msg/s   p50 {p50:7.1f} ms"
            f"   p99 {p99:7.1f} ms{ratio}"
        )

    def p99(self, channel: str) -> float | None:
        values = sorted(self.samples.get(channel, []))
        return values[min(len(values) - 1, int(len(values) * 0.99))] * 1000 if values else None


async def bare_client(sim: SimulatorProcess, pairs: list[str], seconds: float) -> Latencies:
    """Every @trade and @ticker stream straight from the simulator, decoded with orjson."""
    streams = [f"{p.lower()}@{kind}" for p in pairs for kind in ("trade", "ticker")]
    latencies = Latencies()

    async def read(session: aiohttp.ClientSession, chunk: list[str]) -> None:
        url = f"{sim.ws_url}/stream?streams={'/'.join(chunk)}"
        async with session.ws_connect(url, max_msg_size=0) as ws:
            async for msg in ws:
                now = time.time()
                data = orjson.loads(msg.data)["data"]
                channel = "trades" if data.get("e") == "trade" else "tickers"
                latencies.add(channel, data["E"], now)

    async with aiohttp.ClientSession() as session:
        chunks = [
            streams[i : i + STREAMS_PER_CONNECTION]
            for i in range(0, len(streams), STREAMS_PER_CONNECTION)
        ]
        tasks = [asyncio.create_task(read(session, c)) for c in chunks]
        await asyncio.sleep(3)  # connected and flowing
        latencies.counting = True
        await asyncio.sleep(seconds)
        latencies.counting = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return latencies


async def pipeline(
    sim: SimulatorProcess,
    cluster: NatsCluster,
    redis_server: RedisServer,
    seconds: float,
    logdir: Path,
) -> tuple[Latencies, dict[str, float], dict[str, int]]:
    latencies = Latencies()
    sizes: dict[str, int] = {}
    nc = await nats.connect(servers=cluster.urls, pending_size=512 * 1024 * 1024)

    async def on_message(msg: Any) -> None:
        now = time.time()
        channel = msg.subject.partition(".")[0]
        if channel == "markets":
            sizes[msg.subject] = max(sizes.get(msg.subject, 0), len(msg.data))
            if msg.subject == "markets.DATA":
                latencies.add(
                    "markets.DATA", max(t["E"] for t in orjson.loads(msg.data).values()), now
                )
            return
        latencies.add(channel, orjson.loads(msg.data)["E"], now)

    await nc.subscribe(">", cb=on_message, pending_msgs_limit=50_000_000)
    env = service_env(
        sim, cluster, redis_server, streams_per_connection=str(STREAMS_PER_CONNECTION)
    )
    processes = {}
    for name in SERVICES:
        processes[name] = await asyncio.to_thread(start_service, name, env, logdir, 120)
    try:
        await asyncio.sleep(3)
        pids = {name: p.proc.pid for name, p in processes.items() if p.proc is not None}
        pids["simulator"] = sim.pid
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        latencies.counting = True
        await asyncio.sleep(seconds)
        latencies.counting = False
        elapsed = time.monotonic() - started
        cpu = {name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}
    finally:
        await nc.close()
        for process in processes.values():
            await asyncio.to_thread(process.stop)
    return latencies, cpu, sizes


async def main(args: argparse.Namespace) -> None:
    logdir = Path(args.logdir)
    await asyncio.to_thread(logdir.mkdir, parents=True, exist_ok=True)
    cluster = NatsCluster(size=1).start()
    redis_server = RedisServer().start()
    sim = SimulatorProcess(
        symbols=args.pairs,
        seed=1,
        extra_args=["--levels", "200", "--rate", str(args.rate)],
    )
    await asyncio.to_thread(sim.start, 120)
    try:
        pairs = [s["symbol"] for s in await asyncio.to_thread(sim.admin, "GET", "symbols")]
        print(f"{len(pairs)} pairs, simulator --rate {args.rate}, {args.seconds:.0f} s per phase")
        sim_before, at = cpu_seconds(sim.pid), time.monotonic()
        baseline = await bare_client(sim, pairs, args.seconds)
        sim_cpu = (cpu_seconds(sim.pid) - sim_before) / (time.monotonic() - at)
        print(f"\nbaseline: bare client on the simulator's streams (simulator CPU {sim_cpu:.0%})")
        for channel in ("trades", "tickers"):
            print(baseline.line(channel, args.seconds, None))
        latencies, cpu, sizes = await pipeline(sim, cluster, redis_server, args.seconds, logdir)
        print("\nservices: exchange event E -> NATS subscriber")
        for channel in ("trades", "tickers"):
            print(latencies.line(channel, args.seconds, baseline.p99(channel)))
        print(latencies.line("markets.DATA", args.seconds, None))
        print("  largest markets.SNAPSHOT / DATA: "
              f"{sizes.get('markets.SNAPSHOT', 0) / 1024:.0f} KiB / "
              f"{sizes.get('markets.DATA', 0) / 1024:.0f} KiB")  # fmt: skip
        print("\nCPU share (100% = one core):")
        for name, share in cpu.items():
            print(f"  {name:<10} {share:6.0%}")
        print(f"\nlogs: {logdir}")
    finally:
        await asyncio.to_thread(sim.stop)
        redis_server.stop()
        cluster.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=10.0, help="simulator steps/s per pair")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase")
    parser.add_argument("--logdir", default="/tmp/marketpipe-bench-feeds")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

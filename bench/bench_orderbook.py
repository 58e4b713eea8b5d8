"""Benchmark b: the whole exchange (2000 pairs x 10 diffs/s) into one ``orderbook`` process.

    .venv/bin/python -m bench.bench_orderbook [--pairs 2000] [--rate 10] [--seconds 60]
        [--no-baseline] [--profile FILE.svg|FILE.txt]

One simulator process (``--pairs`` symbols, ``--rate`` diffs/s per pair, ``--levels`` a side), a
1-node NATS server and Redis on loopback; the orderbook service with its defaults (publish interval
100 ms, view ``Depth`` 250 inside a 35 % spread, snapshots 5000 levels for priority pairs, 500 for
the others) except the REST weight budget, raised (service and simulator) so that the initial
sync of every book takes seconds instead of the ~30 minutes 2000 snapshots need at 6000/min: the
measured window starts :data:`SETTLE_SECONDS` after every book is live (``/readyz``: the sync of
2000 books ends in a burst of first publications and cache writes that is not the steady state
this measures), and the sync time is printed.

1. Baseline: a bare client in this process reads every ``<pair>@depth@100ms`` stream straight
   from the simulator (aiohttp, orjson) and records exchange event time ``E`` -> receive time:
   the floor set by the simulator and the machine.
2. The orderbook service as a subprocess (leader, no etcd). A NATS subscriber in this process
   takes ``orderbook.<SYMBOL>`` for a sample of pairs (every 10th: parsing 20 k books/s of
   ~16 KB here would measure this process, not the service) and records per message:
   - ``E -> received``: includes the throttle's wait;
   - **beyond the throttle**: received - max(``E``, previous message of that pair received +
     interval). The service may not send a pair's book before its previous one + interval, so
     this is the time the pipeline adds on top of what the throttle forces (a change arriving
     after a quiet interval counts from its ``E``).
   Lag: p50 beyond the throttle per tenth of the window (it must not grow). CPU share of each
   process from ``/proc/<pid>/stat`` (100 % = one core), the service's RSS at start and end, and
   the book resyncs in the window by reason (``window`` ones show the market walking out of the
   snapshots' windows: at 200 pairs over 5 minutes, 16, about one per pair-hour).

Prints figures and ratios against the baseline and the targets (<= 1 core, p99 <= 20 ms), and
the machine's contention over the window: how busy all its cores were, and the share of the
window the service's event loop was runnable but waiting for a core (``/proc/<pid>/schedstat``;
the simulator, NATS and this process share the machine's cores with it). The machine is shared:
compare CPU per diff between runs, not absolute latencies of a loaded machine. ``--profile``
records the service with py-spy during the window (``.svg``: a flame graph; anything else:
collapsed stacks for grepping).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import orjson

from bench.procstat import (
    cpu_seconds,
    cpu_split,
    machine_busy_seconds,
    percentile,
    rss_mb,
    run_and_wait_seconds,
)
from marketpipe.infra.local import NatsCluster, Process, RedisServer
from marketpipe.infra.services import service_env, service_port, start_service
from marketpipe.infra.simulator import SimulatorProcess

STREAMS_PER_CONNECTION = 200
SAMPLE_EVERY = 10
INTERVAL_MS = 100
WEIGHT_LIMIT = 10_000_000
SETTLE_SECONDS = 10  # after every book is live, before the window


def header_event_time(data: bytes) -> int:
    """``E`` from the head of an ``orderbook.<SYMBOL>`` message, without parsing the levels."""
    at = data.index(b'"E":') + 4
    return int(data[at : data.index(b",", at)])


@dataclass
class Samples:
    raw: list[float] = field(default_factory=list)
    beyond: list[tuple[float, float]] = field(default_factory=list)  # (received, seconds)
    last_received: dict[str, float] = field(default_factory=dict)
    counting: bool = False

    def add(self, symbol: str, event_ms: int, now: float) -> None:
        event = event_ms / 1000
        previous = self.last_received.get(symbol)
        self.last_received[symbol] = now
        if not self.counting:
            return
        self.raw.append(now - event)
        allowed = event if previous is None else max(event, previous + INTERVAL_MS / 1000)
        self.beyond.append((now, now - allowed))


async def bare_client(sim: SimulatorProcess, pairs: list[str], seconds: float) -> list[float]:
    """E -> receive time of every diff, read straight from the simulator."""
    streams = [f"{p.lower()}@depth@100ms" for p in pairs]
    latencies: list[float] = []
    counting = False

    async def read(session: aiohttp.ClientSession, chunk: list[str]) -> None:
        url = f"{sim.ws_url}/stream?streams={'/'.join(chunk)}"
        async with session.ws_connect(url, max_msg_size=0) as ws:
            async for msg in ws:
                now = time.time()
                if counting:
                    latencies.append(now - orjson.loads(msg.data)["data"]["E"] / 1000)

    async with aiohttp.ClientSession() as session:
        chunks = [
            streams[i : i + STREAMS_PER_CONNECTION]
            for i in range(0, len(streams), STREAMS_PER_CONNECTION)
        ]
        tasks = [asyncio.create_task(read(session, c)) for c in chunks]
        await asyncio.sleep(3)
        counting = True
        await asyncio.sleep(seconds)
        counting = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return latencies


@dataclass
class Counters:
    """What the service has counted so far (its /metrics)."""

    published: float = 0.0  # books
    received: float = 0.0  # depth frames
    resyncs: dict[str, float] = field(default_factory=dict)  # by reason

    def since(self, earlier: Counters) -> dict[str, float]:
        """Resyncs by reason between ``earlier`` and these."""
        return {
            reason: count - earlier.resyncs.get(reason, 0.0)
            for reason, count in self.resyncs.items()
            if count > earlier.resyncs.get(reason, 0.0)
        }


_RESYNC = 'marketpipe_book_resyncs_total{reason="'


async def counters(port: int) -> Counters:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    found = Counters()
    for line in text.splitlines():
        value = float(line.rsplit(" ", 1)[-1]) if not line.startswith("#") else 0.0
        if line.startswith('marketpipe_published_messages_total{channel="orderbook"}'):
            found.published += value
        elif line.startswith('marketpipe_exchange_messages_total{stream="depth"}'):
            found.received += value
        elif line.startswith(_RESYNC):
            found.resyncs[line[len(_RESYNC) : line.index('"', len(_RESYNC))]] = value
    return found


async def run_service(
    sim: SimulatorProcess,
    cluster: NatsCluster,
    redis_server: RedisServer,
    pairs: list[str],
    seconds: float,
    logdir: Path,
    profile: str | None,
) -> dict[str, Any]:
    samples = Samples()
    nc = await nats.connect(servers=cluster.urls, pending_size=512 * 1024 * 1024)

    async def on_message(msg: Any) -> None:
        samples.add(msg.subject, header_event_time(msg.data), time.time())

    for symbol in pairs[::SAMPLE_EVERY]:
        await nc.subscribe(f"orderbook.{symbol}", cb=on_message, pending_msgs_limit=10_000_000)
    env = service_env(
        sim,
        cluster,
        redis_server,
        rest_weight_limit=str(WEIGHT_LIMIT),
        streams_per_connection=str(STREAMS_PER_CONNECTION),
        settings_url=sim.settings_url,
    )
    began = time.monotonic()
    process = await asyncio.to_thread(start_service, "orderbook", env, logdir, 900)
    synced_after = time.monotonic() - began
    assert process.proc is not None
    pid, port = process.proc.pid, service_port(process)
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        rss_start = rss_mb(pid)
        pids = {
            "orderbook": pid,
            "simulator": sim.pid,
            "nats": server_pid(cluster.nodes[0]),
            "redis": server_pid(redis_server.process),
        }
        cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
        split_before = cpu_split(pid)
        sched_before, machine_before = run_and_wait_seconds(pid), machine_busy_seconds()
        before = await counters(port)
        profiler = start_profiler(pid, seconds, profile) if profile else None
        started = time.monotonic()
        samples.counting = True
        await asyncio.sleep(seconds)
        samples.counting = False
        elapsed = time.monotonic() - started
        load = os.getloadavg()[0]
        after = await counters(port)
        cpu = {name: (cpu_seconds(p) - cpu_before[name]) / elapsed for name, p in pids.items()}
        split = [(b - a) / elapsed for a, b in zip(split_before, cpu_split(pid), strict=True)]
        waited = (run_and_wait_seconds(pid)[1] - sched_before[1]) / elapsed
        busy, total = (b - a for a, b in zip(machine_before, machine_busy_seconds(), strict=True))
        rss_end = rss_mb(pid)
        if profiler is not None:
            await asyncio.to_thread(profiler.wait, 30)
    finally:
        await nc.close()
        await asyncio.to_thread(process.stop)
    return {
        "samples": samples,
        "cpu": cpu,
        "rss": (rss_start, rss_end),
        "published_per_second": (after.published - before.published) / elapsed,
        "received_per_second": (after.received - before.received) / elapsed,
        "resyncs": after.since(before),
        "synced_after": synced_after,
        "load": load,
        "split": split,
        "waited": waited,
        "machine_busy": busy / total,
        "cores": os.cpu_count(),
    }


def server_pid(process: Process | None) -> int:
    assert process is not None and process.proc is not None
    return process.proc.pid


def start_profiler(pid: int, seconds: float, out: str) -> subprocess.Popen[bytes]:
    """py-spy on the service for the measured window (``.svg``: flame graph, else collapsed)."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise SystemExit("--profile needs py-spy on PATH")
    form = "flamegraph" if out.endswith(".svg") else "raw"
    argv = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
    return subprocess.Popen(
        [*argv, "--format", form, "--output", out, "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def lag_by_tenth(samples: Samples, seconds: float) -> list[float]:
    if not samples.beyond:
        return []
    first = samples.beyond[0][0]
    tenths: list[list[float]] = [[] for _ in range(10)]
    for received, value in samples.beyond:
        tenths[min(9, int((received - first) / seconds * 10))].append(value)
    return [percentile(t, 0.5) * 1000 for t in tenths if t]


async def main(args: argparse.Namespace) -> None:
    logdir = Path(args.logdir)
    await asyncio.to_thread(logdir.mkdir, parents=True, exist_ok=True)
    cluster = NatsCluster(size=1).start()
    redis_server = RedisServer().start()
    sim = SimulatorProcess(
        symbols=args.pairs,
        seed=1,
        extra_args=[
            *("--levels", str(args.levels), "--rate", str(args.rate)),
            *("--weight-limit", str(WEIGHT_LIMIT)),
        ],
    )
    await asyncio.to_thread(sim.start, 180)
    try:
        pairs = [s["symbol"] for s in await asyncio.to_thread(sim.admin, "GET", "symbols")]
        print(
            f"{len(pairs)} pairs x {args.rate:g} diffs/s, {args.levels} levels a side, "
            f"{args.seconds:.0f} s measured per phase"
        )
        base99 = float("nan")
        if args.baseline:
            baseline = await bare_client(sim, pairs, args.seconds)
            base50, base99 = percentile(baseline, 0.5) * 1000, percentile(baseline, 0.99) * 1000
            print("\nbaseline: bare client on the simulator's depth streams, E -> received")
            print(
                f"  {len(baseline) / args.seconds:9.0f} diffs/s   p50 {base50:6.1f} ms   "
                f"p99 {base99:6.1f} ms"
            )
        result = await run_service(
            sim, cluster, redis_server, pairs, args.seconds, logdir, args.profile
        )
        samples: Samples = result["samples"]
        beyond = [v for _, v in samples.beyond]
        b50, b99 = percentile(beyond, 0.5) * 1000, percentile(beyond, 0.99) * 1000
        r50, r99 = percentile(samples.raw, 0.5) * 1000, percentile(samples.raw, 0.99) * 1000
        cpu = result["cpu"]
        rss_start, rss_end = result["rss"]
        print(f"\norderbook: all books live {result['synced_after']:.1f} s after start")
        print(
            f"  published {result['published_per_second']:9.0f} books/s "
            f"(target ceiling {len(pairs) * 1000 / INTERVAL_MS:.0f}/s)"
        )
        print(
            f"  E -> received (incl. throttle wait) p50 {r50:6.1f} ms   p99 {r99:6.1f} ms   "
            f"({len(samples.raw)} messages of {len(pairs[::SAMPLE_EVERY])} sampled pairs)"
        )
        print(
            f"  beyond the throttle                p50 {b50:6.1f} ms   p99 {b99:6.1f} ms   "
            f"(target p99 <= 20 ms: {'met' if b99 <= 20 else 'MISSED'}; "
            f"p99 x{b99 / base99:.1f} the baseline's)"
        )
        lag = lag_by_tenth(samples, args.seconds)
        print("  lag: p50 beyond the throttle per tenth of the window (ms): "
              + " ".join(f"{v:.1f}" for v in lag))  # fmt: skip
        print(
            f"  CPU: orderbook {cpu['orderbook']:.0%} of a core "
            f"(target <= 100%: {'met' if cpu['orderbook'] <= 1 else 'MISSED'}), "
            f"simulator {cpu['simulator']:.0%}, nats-server {cpu['nats']:.0%}, "
            f"redis-server {cpu['redis']:.0%}"
        )
        received = result["received_per_second"]
        per_diff = cpu["orderbook"] / received * 1e6 if received else float("nan")
        target = len(pairs) * args.rate
        print(
            f"  CPU per diff received (decode, apply, its share of views and publishing): "
            f"{per_diff:.0f} us; at {target:.0f} diffs/s that is {per_diff * target / 1e6:.0%} "
            f"of a core (received {received:.0f} diffs/s here)"
        )
        user, system, switches = result["split"]
        print(
            f"  orderbook CPU split: user {user:.0%}, system {system:.0%} of a core; "
            f"{switches:.0f} context switches/s"
        )
        published = result["published_per_second"]
        per_book = cpu["orderbook"] / published * 1e6 if published else float("nan")
        print(f"  CPU per book published (all of the service's CPU / books): {per_book:.0f} us")
        print(f"  RSS: {rss_start:.0f} MB at start, {rss_end:.0f} MB at end")
        resyncs = result["resyncs"]
        print(
            "  book resyncs in the window: "
            + (", ".join(f"{r} {n:.0f}" for r, n in sorted(resyncs.items())) or "none")
        )
        print(
            f"  contention: the machine's {result['cores']} cores were "
            f"{result['machine_busy']:.0%} busy; the service waited for a core "
            f"{result['waited']:.0%} of the window (runnable, not running)"
        )
        print(f"  load average (1 min) at the end of the window: {result['load']:.1f}")
        if args.profile:
            print(f"  profile: {args.profile}")
        print(f"\nlogs: {logdir}")
    finally:
        await asyncio.to_thread(sim.stop)
        redis_server.stop()
        cluster.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=10.0, help="diffs/s per pair")
    parser.add_argument("--levels", type=int, default=1000, help="simulated levels a side")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per phase")
    parser.add_argument("--logdir", default="/tmp/marketpipe-bench-orderbook")
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="skip the bare client"
    )
    parser.add_argument("--profile", help="py-spy output of the service (.svg or collapsed)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

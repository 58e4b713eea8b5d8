"""End-to-end latency: simulator -> orderbook, trades, tickers services -> gateway -> clients.

The exchange simulator (``pairs`` symbols), the three producer services and the gateway run as
subprocesses on a 1-node NATS server and Redis. Two receivers run at the same time, each in its
own process (``bench.gateway.e2e_load``):

- ``clients`` WebSocket clients of the gateway, each subscribed to ``all@SYMBOL`` for every pair;
- the baseline: one NATS subscriber on the same subjects, i.e. the same path without the gateway.

Each records, per message, receipt time minus the exchange event time ``E`` it carries. Books
are throttled by the orderbook service (at most one per pair per ``PublishIntervalMs``, 100 ms),
so their raw latency includes up to one interval of waiting that no later stage can remove;
"beyond the interval" states ``max(0, raw - interval)``, a lower bound of what the pipeline adds
on top of the throttle. The gateway's own part is measured directly: the same message (channel,
symbol, ``seq``/``t``/``E``) matched between the two receivers, client receipt minus NATS
subscriber receipt.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson

from bench.procstat import cpu_seconds, percentile
from marketpipe.infra.local import NatsCluster, Process, RedisServer
from marketpipe.infra.services import service_env, service_port, start_service
from marketpipe.infra.simulator import SimulatorProcess

PRODUCERS = ("orderbook", "trades", "tickers")
CHANNELS = ("orderbook", "trades", "tickers")
INTERVAL_MS = 100  # the orderbook service's default PublishIntervalMs
WEIGHT_LIMIT = 10_000_000  # initial sync of every book in seconds, not minutes
WARMUP_SECONDS = 3.0

Record = tuple[str, str, int, int, float]  # channel, symbol, id, E (ms), received (s)


def receiver(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.gateway.e2e_load", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def p50_p99_ms(values: list[float]) -> str:
    p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
    return f"p50 {p50:7.1f} ms   p99 {p99:7.1f} ms"


def waited_seconds(pid: int) -> float:
    """Time ``pid`` spent runnable but waiting for a core (the scheduler's run-queue delay)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def latencies(records: list[Record], channel: str) -> list[float]:
    """Receipt minus ``E``, seconds; for books beyond the publish interval (clipped at 0)."""
    raw = [now - e / 1000 for ch, _, _, e, now in records if ch == channel]
    if channel == "orderbook":
        return [max(0.0, r - INTERVAL_MS / 1000) for r in raw]
    return raw


def report(
    records: dict[str, list[Record]],
    clients: int,
    seconds: float,
    cpu: dict[str, float],
    waited: dict[str, float],
) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nend to end: E -> receipt, {seconds:g} s measured, {clients} gateway clients "
        f"(machine load average {load} on {os.cpu_count()} cores)"
    )
    sources = (("gateway client", clients), ("NATS baseline", 1))
    worst = dict.fromkeys(records, 0.0)
    for channel in CHANNELS:
        print(f"  {channel}")
        for source, per in sources:
            raw = [now - e / 1000 for ch, _, _, e, now in records[source] if ch == channel]
            rate = len(raw) / seconds / per
            print(f"    {source:<15} {rate:7.0f} msg/s each   raw     {p50_p99_ms(raw)}")
            stated = latencies(records[source], channel)
            if channel == "orderbook":
                print(f"    {'':<15} {'':>17}   beyond the interval {p50_p99_ms(stated)}")
            worst[source] = max(worst[source], percentile(stated, 0.99) * 1000)
        baseline = {(ch, s, i): now for ch, s, i, _, now in records["NATS baseline"]}
        hop = [
            now - baseline[(ch, s, i)]
            for ch, s, i, _, now in records["gateway client"]
            if ch == channel and (ch, s, i) in baseline
        ]
        print(f"    gateway's own part (client - NATS receipt, same message) {p50_p99_ms(hop)}")
    print("  CPU over the window (100% = one core): "
          + ", ".join(f"{name} {share:.0%}" for name, share in cpu.items()))  # fmt: skip
    print("  runnable but waiting for a core (share of the window): "
          + ", ".join(f"{name} {share:.0%}" for name, share in waited.items()))  # fmt: skip
    met = "met" if worst["gateway client"] <= 10 else "MISSED"
    print(
        f"  worst channel p99 (trades, tickers raw; books beyond the interval): "
        f"gateway clients {worst['gateway client']:.1f} ms (target <= 10 ms: {met}), "
        f"NATS baseline {worst['NATS baseline']:.1f} ms"
    )


def run(args: argparse.Namespace) -> None:
    cluster = NatsCluster(size=1).start()
    redis_server = RedisServer().start()
    sim = SimulatorProcess(
        symbols=args.e2e_pairs, extra_args=["--weight-limit", str(WEIGHT_LIMIT)]
    ).start(120)
    logdir = Path(tempfile.mkdtemp(prefix="mp-bench-gateway-"))
    env = service_env(
        sim,
        cluster,
        redis_server,
        rest_weight_limit=str(WEIGHT_LIMIT),
        settings_url=sim.settings_url,
        gateway_max_topics=str(4 * args.e2e_pairs),
        gateway_max_message_bytes=str(64 * args.e2e_pairs),
        log_level="WARNING",
    )
    started: list[Process] = []
    receivers: list[subprocess.Popen[str]] = []
    try:
        for name in (*PRODUCERS, "gateway"):
            started.append(start_service(name, env, logdir, timeout=300))
        pairs = [s["symbol"] for s in sim.admin("GET", "symbols")]
        gateway_url = f"http://127.0.0.1:{service_port(started[-1])}/ws"
        names = ("gateway client", "NATS baseline")
        receivers = [
            receiver(["ws", gateway_url, str(args.e2e_clients), ",".join(pairs)]),
            receiver(["nats", cluster.urls[0], "1", ",".join(pairs)]),
        ]
        for name, proc in zip(names, receivers, strict=True):
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "READY", f"{name} receiver failed"
        start = time.time() + WARMUP_SECONDS
        end = start + args.e2e_seconds
        for proc in receivers:
            assert proc.stdin is not None
            proc.stdin.write(f"{start} {end}\n")
            proc.stdin.flush()
        pids = {p.name: p.proc.pid for p in started if p.proc} | {
            "simulator": sim.pid,
            "clients": receivers[0].pid,
            "NATS subscriber": receivers[1].pid,
        }
        time.sleep(max(0.0, start - time.time()))
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        waited_before = {name: waited_seconds(pid) for name, pid in pids.items()}
        time.sleep(max(0.0, end - time.time()))
        cpu = {
            name: (cpu_seconds(pid) - before[name]) / args.e2e_seconds for name, pid in pids.items()
        }
        waited = {
            name: (waited_seconds(pid) - waited_before[name]) / args.e2e_seconds
            for name, pid in pids.items()
        }
        records: dict[str, list[Record]] = defaultdict(list)
        for name, proc in zip(names, receivers, strict=True):
            out, _ = proc.communicate(timeout=120)
            result = orjson.loads(out.strip().splitlines()[-1])
            records[name] = [tuple(r) for r in result["records"]]
            if result["closed"]:
                print(f"  {name}: {len(result['closed'])} connections ended early, e.g. "
                      f"{result['closed'][0]}")  # fmt: skip
        report(records, args.e2e_clients, args.e2e_seconds, cpu, waited)
        print(f"  logs: {logdir}")
    finally:
        for proc in receivers:
            if proc.poll() is None:
                proc.kill()
        for process in reversed(started):
            process.stop()
        sim.stop()
        redis_server.stop()
        cluster.stop()

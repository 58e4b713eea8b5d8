"""Gateway benchmarks, in one run: fan-out throughput, then end-to-end latency.

    .venv/bin/python -m bench.bench_gateway [--clients 1000] [--rate 100] [--seconds 5]
        [--e2e-pairs 100] [--e2e-clients 10] [--e2e-seconds 20] [--only throughput|e2e]

1. Throughput, side by side with a bare aiohttp broadcast server: for each server, start it (its
   own process, uvloop), connect ``--clients`` WebSocket clients from ``--loaders``
   load-generator processes, publish ``--rate`` trade messages a second to NATS for
   ``--seconds``, and count what the clients receive. Prints deliveries/s, publish-to-receipt
   p50/p99 and the gateway/bare ratio (target: at least 0.5). The gateway runs with large
   slow-client limits (1 GiB pending, 600 s write deadline) so that saturation shows as
   latency rather than as disconnected clients.
2. End to end (``bench/gateway/e2e.py``): simulator (``--e2e-pairs``) -> orderbook, trades and
   tickers services -> gateway -> ``--e2e-clients`` clients subscribed to ``all@SYMBOL`` for
   every pair, beside a NATS subscriber on the same subjects (the same path without the
   gateway). Prints p50/p99 of exchange event time ``E`` to receipt per channel, books also
   beyond the publish interval, and the gateway's own part per message (target p99 <= 10 ms).
   Each client takes ~1000 books/s of ~15 KB (Depth 250): 10 clients are 150 MB/s through
   the gateway; 50 (750 MB/s) need both cores free of other work.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nats
import orjson

from bench.gateway import e2e
from marketpipe.infra.local import NatsCluster, Process, RedisServer, _http_ok, free_port

TOPIC = "trades@BTCUSDT"
SUBJECT = "trades.BTCUSDT"


@dataclass
class Result:
    name: str
    deliveries: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0


async def publish(nats_url: str, rate: int, seconds: float) -> float:
    nc = await nats.connect(nats_url)
    start = time.time()
    sent, tick = 0, 0.01
    while time.time() - start < seconds:
        due = int((time.time() - start) * rate) + 1
        while sent < min(due, int(rate * seconds)):
            trade = {"sent": time.time(), "e": "trade", "s": "BTCUSDT", "t": sent,
                     "p": "64123.45", "q": "0.0123", "m": True, "sd": "SELL"}  # fmt: skip
            await nc.publish(SUBJECT, orjson.dumps(trade))
            sent += 1
        await nc.flush()
        await asyncio.sleep(tick)
    await nc.close()
    return start


def measure(name: str, ws_url: str, nats_url: str, args: argparse.Namespace) -> Result:
    expected = int(args.rate * args.seconds)
    per_loader = [args.clients // args.loaders] * args.loaders
    per_loader[0] += args.clients - sum(per_loader)
    loaders = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.gateway.load",
                ws_url,
                str(n),
                TOPIC,
                str(expected),
                str(args.seconds + 30),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in per_loader
    ]
    for loader in loaders:
        assert loader.stdout is not None
        assert loader.stdout.readline().strip() == "READY", f"{name}: a loader failed to connect"
    time.sleep(1.0)  # let the last subscriptions land
    start = asyncio.run(publish(nats_url, args.rate, args.seconds))
    results = []
    for loader in loaders:
        out, _ = loader.communicate(timeout=args.seconds + 60)
        results.append(orjson.loads(out.strip().splitlines()[-1]))
    deliveries = sum(r["deliveries"] for r in results)
    last = max(r["last"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"])
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
    return Result(name, deliveries, max(last - start, 1e-9), p50, p99)


def start_server(
    name: str, argv: list[str], port: int, env: dict[str, str], logdir: str
) -> Process:
    process = Process(
        name=name,
        argv=argv,
        healthy=functools.partial(_http_ok, f"http://127.0.0.1:{port}/readyz"),
        log_path=Path(logdir) / f"{name}.log",
        env=env,
    )
    process.start(timeout=30)
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=100, help="messages/s published")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--loaders", type=int, default=2, help="load-generator processes")
    parser.add_argument("--e2e-pairs", type=int, default=100, help="end-to-end run: pairs")
    parser.add_argument("--e2e-clients", type=int, default=10, help="end-to-end run: clients")
    parser.add_argument("--e2e-seconds", type=float, default=20.0, help="end-to-end run: window")
    parser.add_argument(
        "--only", choices=("throughput", "e2e"), help="run one part (default: both)"
    )
    args = parser.parse_args()
    if args.only != "e2e":
        throughput(args)
    if args.only != "throughput":
        e2e.run(args)
    return 0


def throughput(args: argparse.Namespace) -> None:

    cluster = NatsCluster(size=1).start()
    redis = RedisServer().start()
    nats_url = cluster.urls[0]
    logdir = str(cluster.workdir)
    results = []
    try:
        port = free_port()
        bare = start_server(
            "bare",
            [sys.executable, "-m", "bench.gateway.bare_server", str(port), nats_url, SUBJECT],
            port,
            {},
            logdir,
        )
        try:
            results.append(measure("bare aiohttp", f"http://127.0.0.1:{port}/ws", nats_url, args))
        finally:
            bare.stop()
        port = free_port()
        env = {
            "MARKETPIPE_NATS_URLS": nats_url,
            "MARKETPIPE_REDIS_URL": redis.url,
            "MARKETPIPE_ETCD_ENDPOINTS": "",
            "MARKETPIPE_GATEWAY_MAX_PENDING_BYTES": str(2**30),
            "MARKETPIPE_GATEWAY_WRITE_DEADLINE_SECONDS": "600",
            "MARKETPIPE_LOG_LEVEL": "WARNING",
        }
        gateway = start_server(
            "gateway",
            [sys.executable, "-m", "marketpipe", "gateway", "--port", str(port)],
            port,
            env,
            logdir,
        )
        try:
            results.append(measure("gateway", f"http://127.0.0.1:{port}/ws", nats_url, args))
        finally:
            gateway.stop()
    finally:
        redis.stop()
        cluster.stop()

    expected = int(args.rate * args.seconds) * args.clients
    print(
        f"\n{args.clients} clients, {args.rate} msgs/s for {args.seconds:g} s "
        f"({expected} deliveries offered), {os.cpu_count()} cores"
    )
    print(f"{'server':<14}{'delivered':>11}{'deliveries/s':>14}{'p50 ms':>9}{'p99 ms':>9}")
    for r in results:
        print(
            f"{r.name:<14}{r.deliveries:>11}{r.per_second:>14,.0f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}"
        )
    bare_result, gateway_result = results
    ratio = gateway_result.per_second / bare_result.per_second if bare_result.per_second else 0
    print(f"gateway / bare deliveries/s: {ratio:.2f} (target >= 0.50)")


if __name__ == "__main__":
    raise SystemExit(main())

"""Gateway with stalled clients: memory stays bounded and a healthy client is not slowed.

    .venv/bin/python -m bench.bench_gateway_slow [--stalled 2000] [--pairs 2000]
        [--seconds 10] [--trades-per-second 100] [--write-deadline 10]

One gateway (default settings) on a 1-node NATS server and Redis. For the whole run the bench
publishes ``markets.SNAPSHOT`` once a second (``--pairs`` tickers, ~1 MB at 2000, DESIGN §2)
and ``--trades-per-second`` trades on ``trades.BTCUSDT``. One healthy client (its own process,
reading as fast as it can) takes both and times each message from its publication.

1. Baseline: the healthy client alone for ``--seconds``.
2. ``--stalled`` clients (another process) connect as fast as they can, subscribe to
   ``markets@SNAPSHOT`` and never read their sockets; the healthy client is timed while they
   connect (a connection storm: each is sent the newest snapshot at once) and for
   ``--seconds`` beside them once they are all in. Then the bench waits until the gateway has
   cut them all (1013, counted) and they are gone.

Prints, per window, the healthy client's p50/p99 per channel and the gateway's CPU, the ratio
of the p99 beside the stalled clients to the p99 alone (target <= 2; the storm's ratio is
printed too), the gateway's RSS (before, peak in phase 2, after) against
the stated bound, how the stalled clients ended, and the kernel's TCP memory. The healthy
client's records are left in the log directory (``healthy.json``).

The RSS bound: a client never holds more than ``GATEWAY_MAX_PENDING_BYTES`` plus one frame, and
never longer than the write deadline plus as long again for its close frame; the frames it
holds are the fan-out's own, shared with every other client (never copied per client). So the
frames alive are at most what was published in the last ``2 x deadline`` (+4 s of margin),
counted once, and each connection adds only its fixed cost (``PER_CONNECTION_KIB``):
``RSS before + N x PER_CONNECTION_KIB + published bytes/s x (2 x deadline + 4 s)``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nats
import orjson

from bench.procstat import cpu_seconds, percentile, rss_mb
from marketpipe.config import Settings
from marketpipe.gateway.server import DIRECT_WRITE_LIMIT
from marketpipe.infra.local import NatsCluster, Process, RedisServer, _http_ok, free_port

HEALTHY_TOPICS = "markets@SNAPSHOT,trades@BTCUSDT"
# aiohttp's request handler, WebSocket reader and parser, two tasks, the session and the send
# queue of one connection (about 35 KiB measured here)
PER_CONNECTION_KIB = 64
STALLED_TOPICS = "markets@SNAPSHOT"


def snapshot(pairs: int, sent_ms: int) -> bytes:
    """A markets snapshot of ``pairs`` 24 h tickers (DESIGN §2), each stamped ``E = sent_ms``."""
    tickers = {}
    for i in range(pairs):
        symbol = f"P{i:04d}USDT"
        price = f"{100 + i % 977 + (sent_ms % 1000) / 1000:.8f}"
        tickers[symbol] = {
            "e": "24hrTicker", "E": sent_ms, "s": symbol, "p": "-1.23000000",
            "P": "-1.215", "w": price, "c": price, "Q": "0.01230000", "b": price,
            "B": "1.50000000", "a": price, "A": "2.25000000", "o": price, "h": price,
            "l": price, "v": "123456.78900000", "q": "9876543.21000000",
            "O": sent_ms - 86_400_000, "C": sent_ms, "F": 1000000 + i, "L": 1999999 + i,
            "n": 999999,
        }  # fmt: skip
    return orjson.dumps(tickers, option=orjson.OPT_SORT_KEYS)


async def publish(nats_url: str, args: argparse.Namespace, stop: threading.Event) -> int:
    """Snapshots once a second and trades at the given rate until ``stop``; the snapshot size."""
    nc = await nats.connect(nats_url)
    interval = 1.0 / args.trades_per_second
    next_trade = next_snapshot = time.time()
    trade_id, size = 0, 0
    while not stop.is_set():
        now = time.time()
        if now >= next_snapshot:
            payload = snapshot(args.pairs, int(time.time() * 1000))
            size = len(payload)
            await nc.publish("markets.SNAPSHOT", payload)
            next_snapshot += 1.0
        while now >= next_trade:
            trade = {"e": "trade", "E": int(now * 1000), "s": "BTCUSDT", "t": trade_id,
                     "p": "64123.45", "q": "0.0123", "T": int(now * 1000), "m": True,
                     "sd": "SELL", "sent": time.time()}  # fmt: skip
            await nc.publish("trades.BTCUSDT", orjson.dumps(trade))
            trade_id += 1
            next_trade += interval
        await nc.flush()
        await asyncio.sleep(max(0.0, min(next_trade, next_snapshot) - time.time()))
    await nc.close()
    return size


def metric(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


def tcp_memory_mb() -> float:
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return float("nan")


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float, float]] = []  # time, RSS MB, kernel TCP MB
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.samples.append((time.time(), rss_mb(self.pid), tcp_memory_mb()))

    def peak(self, start: float, end: float) -> tuple[float, float]:
        inside = [(r, k) for t, r, k in self.samples if start <= t <= end] or [(0.0, 0.0)]
        return max(r for r, _ in inside), max(k for _, k in inside)


def p50_p99_ms(
    records: list[list[float | str]], channel: str, start: float, end: float
) -> tuple[float, float, int]:
    values = [float(lat) for ch, t, lat in records if ch == channel and start <= float(t) <= end]
    return percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000, len(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stalled", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=2000, help="tickers per snapshot")
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured window")
    parser.add_argument("--trades-per-second", type=int, default=100)
    defaults = Settings()
    parser.add_argument(
        "--write-deadline", type=float, default=defaults.gateway_write_deadline_seconds
    )
    parser.add_argument("--max-pending-bytes", type=int, default=defaults.gateway_max_pending_bytes)
    args = parser.parse_args()

    cluster = NatsCluster(size=1).start()
    redis = RedisServer().start()
    logdir = Path(tempfile.mkdtemp(prefix="mp-bench-gateway-slow-"))
    port = free_port()
    gateway = Process(
        name="gateway",
        argv=[sys.executable, "-m", "marketpipe", "gateway", "--port", str(port)],
        healthy=functools.partial(_http_ok, f"http://127.0.0.1:{port}/readyz"),
        log_path=logdir / "gateway.log",
        env={
            "MARKETPIPE_NATS_URLS": cluster.urls[0],
            "MARKETPIPE_REDIS_URL": redis.url,
            "MARKETPIPE_ETCD_ENDPOINTS": "",
            "MARKETPIPE_LOG_LEVEL": "WARNING",
            "MARKETPIPE_GATEWAY_WRITE_DEADLINE_SECONDS": str(args.write_deadline),
            "MARKETPIPE_GATEWAY_MAX_PENDING_BYTES": str(args.max_pending_bytes),
        },
    )
    stop_publishing = threading.Event()
    publisher_result: list[int] = []
    children: list[subprocess.Popen[str]] = []
    try:
        gateway.start(timeout=30)
        assert gateway.proc is not None
        gateway_pid = gateway.proc.pid
        url = f"http://127.0.0.1:{port}/ws"
        publisher = threading.Thread(
            target=lambda: publisher_result.append(
                asyncio.run(publish(cluster.urls[0], args, stop_publishing))
            ),
            daemon=True,
        )
        healthy = subprocess.Popen(
            [sys.executable, "-m", "bench.gateway.healthy", url, HEALTHY_TOPICS],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        children.append(healthy)
        assert healthy.stdout is not None and healthy.stdin is not None
        assert healthy.stdout.readline().strip() == "READY", "the healthy client failed"
        sampler = RssSampler(gateway_pid)
        sampler.start()
        publisher.start()
        time.sleep(3.0)  # warm-up: a few snapshots through
        base_start = time.time()
        cpu_before = cpu_seconds(gateway_pid)
        time.sleep(args.seconds)
        base_end = time.time()
        base_cpu = (cpu_seconds(gateway_pid) - cpu_before) / args.seconds
        rss_before = rss_mb(gateway_pid)

        stalled = subprocess.Popen(
            [sys.executable, "-m", "bench.gateway.stalled", url, str(args.stalled), STALLED_TOPICS],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        children.append(stalled)
        assert stalled.stdout is not None and stalled.stdin is not None
        # the connection storm: each one is sent the newest snapshot at once
        storm_start = time.time()
        cpu_before = cpu_seconds(gateway_pid)
        ready = stalled.stdout.readline().split()
        assert ready and ready[0] == "READY", "the stalled clients failed to connect"
        storm_end = time.time()
        storm_cpu = (cpu_seconds(gateway_pid) - cpu_before) / (storm_end - storm_start)
        cpu_before = cpu_seconds(gateway_pid)
        time.sleep(args.seconds)
        slow_end = time.time()
        slow_cpu = (cpu_seconds(gateway_pid) - cpu_before) / args.seconds
        # until the gateway has cut every stalled client and let go of it
        deadline = time.time() + args.write_deadline * 3 + 30
        while time.time() < deadline and metric(port, "marketpipe_gateway_connections") > 1:
            time.sleep(0.5)
        gone = time.time()
        time.sleep(2.0)
        rss_after = rss_mb(gateway_pid)
        cut = metric(port, 'marketpipe_gateway_disconnects_total{reason="slow"}')
        dropped = metric(port, 'marketpipe_gateway_dropped_messages_total{reason="slow_client"}')
        connections_left = metric(port, "marketpipe_gateway_connections")
        stalled.communicate(timeout=30)  # closes its stdin: it lets go of its sockets
        out, _ = healthy.communicate(timeout=60)
        result = orjson.loads(out.strip().splitlines()[-1])
        windows = {
            "alone": (base_start, base_end, base_cpu),
            "while they connect": (storm_start, storm_end, storm_cpu),
            "beside them": (storm_end, slow_end, slow_cpu),
        }
        (logdir / "healthy.json").write_bytes(orjson.dumps(result | {"windows": windows}))
        stop_publishing.set()
        publisher.join(10)
        sampler.stop.set()
        rss_peak, tcp_peak = sampler.peak(storm_start, gone)
    finally:
        stop_publishing.set()
        for child in children:
            if child.poll() is None:
                child.kill()
        gateway.stop()
        redis.stop()
        cluster.stop()

    records = result["records"]
    size = publisher_result[0] if publisher_result else 0
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{args.stalled} stalled clients on markets@SNAPSHOT ({size / 2**20:.2f} MiB a second), "
        f"a healthy client on it and trades@BTCUSDT ({args.trades_per_second}/s); write deadline "
        f"{args.write_deadline:g} s, max pending {args.max_pending_bytes / 2**20:g} MiB; "
        f"load average {load} on {os.cpu_count()} cores"
    )
    print(
        f"  the stalled clients connected and subscribed in {storm_end - storm_start:.1f} s; "
        f"measured beside them for {args.seconds:g} s after"
    )
    print(f"  {'healthy client':<33}{'p50 ms':>9}{'p99 ms':>9}{'msgs':>7}{'gateway CPU':>13}")
    p99 = {}
    for channel in ("trades", "snapshot"):
        for window, (start, end, cpu) in windows.items():
            p50, p99[channel, window], n = p50_p99_ms(records, channel, start, end)
            label = f"{channel}, {window}"
            print(f"  {label:<33}{p50:>9.1f}{p99[channel, window]:>9.1f}{n:>7}{cpu:>13.0%}")
    for channel in ("trades", "snapshot"):
        alone = p99[channel, "alone"]
        ratio = p99[channel, "beside them"] / alone if alone else float("nan")
        storm = p99[channel, "while they connect"] / alone if alone else float("nan")
        print(
            f"  p99 ratio {channel}, beside them / alone: {ratio:.2f} "
            f"(target <= 2: {'met' if ratio <= 2 else 'MISSED'}); while they connect: {storm:.2f}"
        )
    per_client_mb = PER_CONNECTION_KIB / 1024
    frames_alive = (2 * args.write_deadline + 4) * size / 2**20
    bound = rss_before + args.stalled * per_client_mb + frames_alive
    print(
        f"  gateway RSS: {rss_before:.0f} MB before, peak {rss_peak:.0f} MB with the stalled "
        f"clients, {rss_after:.0f} MB after (bound {bound:.0f} MB = before + "
        f"{args.stalled} x {per_client_mb * 1024:.0f} KiB + {frames_alive:.0f} MB of shared "
        f"snapshots: {'met' if rss_peak <= bound else 'MISSED'})"
    )
    print(
        f"  without shared frames the per-connection bound would allow "
        f"{args.stalled * (args.max_pending_bytes + size + DIRECT_WRITE_LIMIT) / 2**30:.1f} GiB"
    )
    print(
        f"  stalled clients cut (1013): {cut:.0f} of {args.stalled}, frames dropped {dropped:.0f}, "
        f"connections left {connections_left:.0f}, all gone {gone - storm_end:.1f} s after "
        f"they were in; kernel TCP memory peak {tcp_peak:.0f} MB"
    )
    if result["ended"]:
        print(f"  the healthy client's connection ended: {result['ended'][0]}")
    print(f"  logs: {logdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

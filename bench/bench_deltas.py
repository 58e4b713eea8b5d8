"""Incremental books (DESIGN §10): bytes of full views against deltas, and what deltas cost.

    .venv/bin/python -m bench.bench_deltas [--pairs 2000] [--rate 10] [--seconds 30]

One simulator (``--pairs`` symbols, ``--rate`` diffs/s each), a 1-node NATS server, Redis, the
orderbook service (its defaults, the REST budget raised as in benchmark b) and the gateway.

1. Bytes (measured after 2): for a sample of pairs (every 10th: receiving 300 MB/s of full
   views here would measure this process), bytes per second of ``orderbook.<SYMBOL>`` and of
   ``delta.orderbook.<SYMBOL>`` on NATS, scaled to all pairs; and two gateway clients on the
   same sample, one subscribed to ``orderbook@`` and one to ``depth@`` (its books checked by
   ``marketpipe.client``'s keeper). Target: deltas <= 10 % of the full views' bytes.
2. The orderbook's CPU per diff received with and without deltas: two orderbook processes on
   the same simulator at once, one with ``PUBLISH_DELTAS=false`` (on its own subject prefix),
   so both get the same diffs and the same contention from whatever else the machine runs;
   CPU per diff as benchmark b measures it. Run first, then the deltas-off one stops.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import nats
import orjson

from bench.bench_orderbook import WEIGHT_LIMIT, counters, server_pid
from bench.procstat import cpu_seconds
from marketpipe.client.book import BookKeeper
from marketpipe.infra.local import NatsCluster, Process, RedisServer
from marketpipe.infra.services import service_env, service_port, start_service
from marketpipe.infra.simulator import SimulatorProcess

SAMPLE_EVERY = 10
SETTLE_SECONDS = 10


async def nats_bytes(cluster: NatsCluster, symbols: list[str], seconds: float) -> dict[str, int]:
    """Bytes received per subject kind (full, delta) for ``symbols`` over ``seconds``."""
    got: dict[str, int] = defaultdict(int)
    nc = await nats.connect(servers=cluster.urls, pending_size=512 * 1024 * 1024)

    async def on_full(msg: Any) -> None:
        got["full"] += len(msg.data)
        got["full_messages"] += 1

    async def on_delta(msg: Any) -> None:
        got["delta"] += len(msg.data)
        got["delta_messages"] += 1

    for symbol in symbols:
        await nc.subscribe(f"orderbook.{symbol}", cb=on_full, pending_msgs_limit=1_000_000)
        await nc.subscribe(f"delta.orderbook.{symbol}", cb=on_delta, pending_msgs_limit=1_000_000)
    await nc.flush()
    await asyncio.sleep(2)  # every pair's first full view of this subscription is behind us
    got.clear()
    await asyncio.sleep(seconds)
    counted = dict(got)
    await nc.close()
    return counted


async def gateway_bytes(
    url: str, channel: str, symbols: list[str], seconds: float
) -> dict[str, Any]:
    """Bytes one gateway client receives on ``channel@`` for ``symbols`` over ``seconds``; on
    ``depth@`` its books are kept and checked with the client library's keeper."""
    keepers = {s: BookKeeper(s) for s in symbols}
    counted = {"bytes": 0, "frames": 0, "snapshots": 0, "pairs": 0}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        topics = [f"{channel}@{s}" for s in symbols]
        await ws.send_bytes(orjson.dumps({"action": "subscribe", "topics": topics}))
        counting_from = time.monotonic() + 2
        deadline = counting_from + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            frame = orjson.loads(msg.data)
            if "topic" not in frame:
                continue
            if time.monotonic() >= counting_from:
                counted["bytes"] += len(msg.data)
                counted["frames"] += 1
            if channel == "depth":
                keeper = keepers[frame["topic"].partition("@")[2]]
                if frame["type"] == "snapshot":
                    counted["snapshots"] += 1
                    counted["pairs"] += keeper.stats.views == 0
                    keeper.on_view(frame["data"])
                else:
                    keeper.on_delta(frame["data"])
    if channel == "depth":
        counted["resyncs"] = sum(sum(k.stats.resyncs.values()) for k in keepers.values())
        counted["verified"] = sum(k.stats.checksums_verified for k in keepers.values())
    return counted


async def cpu_per_diff(process: Process, seconds: float) -> float:
    assert process.proc is not None
    pid, port = process.proc.pid, service_port(process)
    before, cpu_before, started = await counters(port), cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    after, cpu = await counters(port), cpu_seconds(pid) - cpu_before
    received = after.received - before.received
    elapsed = time.monotonic() - started
    print(
        f"    orderbook {cpu / elapsed:.0%} of a core, {received / elapsed:.0f} diffs/s, "
        f"{(after.published - before.published) / elapsed:.0f} books/s"
    )
    return cpu / received * 1e6 if received else float("nan")


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
    started: list[Process] = []
    try:
        pairs = [s["symbol"] for s in await asyncio.to_thread(sim.admin, "GET", "symbols")]
        sample = pairs[::SAMPLE_EVERY]
        scale = len(pairs) / len(sample)
        print(
            f"{len(pairs)} pairs x {args.rate:g} diffs/s, {args.levels} levels a side; "
            f"{len(sample)} sampled pairs, {args.seconds:.0f} s per measure"
        )
        env: dict[str, dict[str, str]] = {}
        for deltas in ("true", "false"):  # side by side: the same diffs, the same contention
            env[deltas] = service_env(
                sim,
                cluster,
                redis_server,
                rest_weight_limit=str(WEIGHT_LIMIT),
                streams_per_connection="200",
                publish_deltas=deltas,
                subject_prefix="" if deltas == "true" else "off.",
                gateway_max_topics="1000",  # one client follows every sampled pair
                gateway_max_pending_bytes=str(256 * 1024 * 1024),
            )
        for deltas in env:
            await asyncio.to_thread((logdir / deltas).mkdir, exist_ok=True)
        launched = await asyncio.gather(
            *(asyncio.to_thread(start_service, "orderbook", env[d], logdir / d, 900) for d in env)
        )
        services = dict(zip(env, launched, strict=True))
        started.extend(launched)
        await asyncio.sleep(SETTLE_SECONDS)
        print("\ntwo orderbook services on the same simulator, one with PUBLISH_DELTAS=false")
        per_diff = dict(
            zip(
                services,
                await asyncio.gather(*(cpu_per_diff(p, args.seconds) for p in services.values())),
                strict=True,
            )
        )
        for deltas, figure in per_diff.items():
            print(f"    PUBLISH_DELTAS={deltas}: {figure:.1f} us per diff received")
        on, off = per_diff["true"], per_diff["false"]
        print(
            f"  orderbook CPU per diff received: deltas off {off:.1f} us, on {on:.1f} us "
            f"({on / off - 1:+.0%})"
        )
        await asyncio.to_thread(services["false"].stop)
        started.remove(services["false"])

        gateway = await asyncio.to_thread(start_service, "gateway", env["true"], logdir)
        started.append(gateway)
        url = f"ws://127.0.0.1:{service_port(gateway)}/ws"
        async with asyncio.timeout(args.seconds + 120):
            on_nats, full, depth = await asyncio.gather(
                nats_bytes(cluster, sample, args.seconds),
                gateway_bytes(url, "orderbook", sample, args.seconds),
                gateway_bytes(url, "depth", sample, args.seconds),
            )
        full_rate = on_nats.get("full", 0) / args.seconds * scale
        delta_rate = on_nats.get("delta", 0) / args.seconds * scale
        print("\nbytes, the orderbook with deltas and a gateway")
        print(
            f"  NATS, all pairs (x{scale:.0f} the sample): full views "
            f"{full_rate / 1e6:7.1f} MB/s, deltas {delta_rate / 1e6:6.2f} MB/s = "
            f"{delta_rate / full_rate:.1%} of the full views "
            f"(target <= 10%: {'met' if delta_rate <= 0.1 * full_rate else 'MISSED'})"
        )
        full_size = on_nats["full"] / max(1, on_nats["full_messages"])
        delta_size = on_nats["delta"] / max(1, on_nats["delta_messages"])
        print(f"    per message: full {full_size:.0f} B, delta {delta_size:.0f} B")
        book_rate = full["bytes"] / args.seconds
        depth_rate = depth["bytes"] / args.seconds
        print(
            f"  gateway client, {len(sample)} pairs: orderbook@ "
            f"{book_rate / 1e6:6.2f} MB/s ({full['frames']} frames), depth@ "
            f"{depth_rate / 1e6:6.3f} MB/s ({depth['frames']} frames, "
            f"{depth['pairs']} pairs, {depth['snapshots'] - depth['pairs']} snapshots "
            f"after each pair's first) = "
            f"{depth_rate / book_rate:.1%}; per pair {book_rate / len(sample) / 1e3:.0f} "
            f"vs {depth_rate / len(sample) / 1e3:.1f} KB/s"
        )
        print(
            f"    depth@ books kept by marketpipe.client's keeper: {depth['verified']} "
            f"checksums verified, {depth['resyncs']} resyncs"
        )
        print(f"\nlogs: {logdir}  (nats pid {server_pid(cluster.nodes[0])})")
    finally:
        for process in started:
            await asyncio.to_thread(process.stop)
        await asyncio.to_thread(sim.stop)
        redis_server.stop()
        cluster.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=10.0, help="diffs/s per pair")
    parser.add_argument("--levels", type=int, default=1000, help="simulated levels a side")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per measure")
    parser.add_argument("--logdir", default="/tmp/marketpipe-bench-deltas")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

"""Benchmark: the exchange simulator at full load.

    .venv/bin/python -m bench.bench_simulator [--symbols 2000] [--rate 10] [--seconds 60]

Starts ``marketpipe exchange-sim`` as its own process, measures its CPU share with nobody
subscribed (the baseline: the market model alone), then subscribes one client to every
``<symbol>@depth@100ms`` stream (connections of at most 1024 streams, frames consumed and counted)
and measures again. Prints the simulator's CPU share (from /proc/<pid>/stat), its RSS, and diff
events delivered per second against the target ``symbols x rate``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.request

import aiohttp
import orjson

from bench.procstat import cpu_seconds, rss_mb
from marketpipe.infra.simulator import SimulatorProcess


def market_ticks(url: str) -> int:
    """Full market rounds (every symbol stepped once) the simulator has made."""
    with urllib.request.urlopen(f"{url}/healthz") as resp:
        return int(orjson.loads(resp.read())["ticks"])


async def cpu_share(pid: int, url: str, seconds: float) -> tuple[float, float]:
    """(CPU share of one core, market rounds per second) over ``seconds``."""
    start_cpu, start_ticks, start = cpu_seconds(pid), market_ticks(url), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - start
    return (cpu_seconds(pid) - start_cpu) / elapsed, (market_ticks(url) - start_ticks) / elapsed


async def consume(url: str, names: list[str], counts: list[int], ready: asyncio.Event) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, max_msg_size=0) as ws,
    ):
        await ws.send_str(orjson.dumps({"method": "SUBSCRIBE", "params": names, "id": 1}).decode())
        ready.set()
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                counts[0] += 1
                counts[1] += len(msg.data)


async def measure(args: argparse.Namespace) -> None:
    sim = SimulatorProcess(
        symbols=args.symbols, extra_args=["--rate", str(args.rate), "--levels", str(args.levels)]
    )
    started = time.monotonic()
    sim.start(timeout=120)
    print(f"simulator: {args.symbols} symbols x {args.rate:g} diffs/s, {args.levels} levels/side")
    print(f"  start-up {time.monotonic() - started:.1f} s, pid {sim.pid}")
    try:
        symbols = [s["symbol"] for s in sim.admin("GET", "symbols")]
        await asyncio.sleep(2)
        idle, idle_rounds = await cpu_share(sim.pid, sim.url, min(10.0, args.seconds / 3))
        print(
            f"  baseline, no subscribers: CPU {idle * 100:5.1f}% of one core, "
            f"{idle_rounds:.1f} market rounds/s (target {args.rate:g})"
        )

        names = [f"{s.lower()}@depth@100ms" for s in symbols]
        chunks = [
            names[i : i + args.per_connection] for i in range(0, len(names), args.per_connection)
        ]
        counts = [0, 0]
        readies = [asyncio.Event() for _ in chunks]
        tasks = [
            asyncio.create_task(consume(f"{sim.ws_url}/ws", chunk, counts, ready))
            for chunk, ready in zip(chunks, readies, strict=True)
        ]
        await asyncio.gather(*(r.wait() for r in readies))
        await asyncio.sleep(3)  # warm-up
        start_frames, start_bytes, start = *counts, time.monotonic()
        loaded, rounds = await cpu_share(sim.pid, sim.url, args.seconds)
        elapsed = time.monotonic() - start
        frames = (counts[0] - start_frames) / elapsed
        mbytes = (counts[1] - start_bytes) / elapsed / 1e6
        target = args.symbols * args.rate
        print(f"  {len(chunks)} connection(s), {len(names)} @depth@100ms streams, {elapsed:.0f} s:")
        ratio = loaded / max(idle, 1e-9)
        print(f"  loaded CPU {loaded * 100:5.1f}% of one core ({ratio:.1f}x baseline)")
        print(
            f"  market rounds {rounds:.1f}/s (target {args.rate:g}); RSS {rss_mb(sim.pid):.0f} MB"
        )
        print(
            f"  delivered {frames:,.0f} events/s ({mbytes:.1f} MB/s) vs target {target:,.0f}/s: "
            f"{frames / target:.2f}x"
        )
        per_event = loaded / max(frames, 1)
        print(f"  CPU per delivered event {per_event * 1e6:.1f} us")
        print(
            f"  projected CPU at the full target rate: {per_event * target * 100:.0f}% of one core"
        )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--levels", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--per-connection", type=int, default=1024)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()

"""Recovery after a mass disconnect: every exchange stream connection closed at once.

    .venv/bin/python -m bench.bench_reconnect [--pairs 2000] [--depth 20] [--weight-limit 6000]
        [--settle 61]

One simulator process (``--pairs`` symbols, its REST weight limit per IP as Binance's), a 1-node
NATS server and Redis on loopback, and the orderbook service with its defaults: the REST budget
``--weight-limit`` x ``REST_WEIGHT_SHARE`` 0.5 (80 % of it for snapshots), automatic snapshot
limits (the view's ``Depth`` 20 gives limit 100, weight 5), 200 streams a connection. Once every
book is live (``/readyz``) and the snapshot weight of the initial sync has left the 60 s window
(``--settle``), the simulator closes every stream connection at once (``close`` fault, abrupt).

A NATS subscriber in this process sees each pair's ``resyncing`` status and then its first book
after it (a book goes out only while live); Redis is polled for a book at least that new. Prints
the time until the last pair was back on NATS and in Redis (and the median), the depth requests
and weight the service spent meanwhile (``marketpipe_rest_weight_spent_total``), and the budget.
With the default budget (2400 snapshot weight a minute, spendable at once, back 60 s after it
was spent) a reconnect of P pairs of weight w ends about ``60 s * (ceil(P * w / 2400) - 1)``
after the cut, plus the last burst's fetch time: 2000 pairs at weight 5, ~4 min (docs/deployment.md,
"What a mass reconnect costs").
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from marketpipe.exchange.weights import WeightGate
from marketpipe.infra.local import NatsCluster, Process, RedisServer
from marketpipe.infra.services import metric, service_env, start_service
from marketpipe.infra.simulator import SimulatorProcess
from marketpipe.services.orderbook import SNAPSHOT_BUDGET_SHARE
from marketpipe.transport.nats import NatsClient

POLL_SECONDS = 0.02


@dataclass
class Watch:
    """Per pair: when it went down (``resyncing`` after the cut) and when it was back."""

    pairs: int
    armed: bool = False
    seen: set[str] = field(default_factory=set)  # pairs with a book received before the cut
    all_seen: asyncio.Event = field(default_factory=asyncio.Event)
    down: set[str] = field(default_factory=set)
    back: dict[str, tuple[float, int]] = field(default_factory=dict)  # (time, lastUpdateId)

    async def on_status(self, subject: str, data: bytes) -> None:
        if self.armed:
            message = orjson.loads(data)
            if message["state"] != "live" and message["symbol"] not in self.back:
                self.down.add(message["symbol"])

    async def on_book(self, subject: str, data: bytes) -> None:
        symbol = subject.rsplit(".", 1)[1]
        if not self.armed:
            self.seen.add(symbol)
            if len(self.seen) == self.pairs:
                self.all_seen.set()
        elif symbol in self.down and symbol not in self.back:  # parse only the first one back
            self.back[symbol] = (time.monotonic(), orjson.loads(data)["lastUpdateId"])


@dataclass
class Recovery:
    pairs: int
    nats_seconds: list[float]  # per pair: the cut -> its first book after resyncing
    redis_seconds: list[float]  # the cut -> Redis holds a book at least that new
    depth_requests: int
    depth_weight: float
    budget_per_minute: float  # the snapshot share
    initial_sync_seconds: float

    def report(self) -> str:
        def line(name: str, seconds: list[float]) -> str:
            return (
                f"  {name:5} all {len(seconds)} back in {max(seconds):7.2f} s "
                f"(median {statistics.median(seconds):.2f} s)"
            )

        return "\n".join(
            [
                f"{self.pairs} pairs, initial sync {self.initial_sync_seconds:.1f} s; after all "
                "stream connections closed at once:",
                line("NATS", self.nats_seconds),
                line("Redis", self.redis_seconds),
                f"  depth requests {self.depth_requests}, weight {self.depth_weight:.0f} "
                f"(snapshot budget {self.budget_per_minute:.0f}/min)",
            ]
        )


async def until_cached(
    redis: aioredis.Redis, watch: Watch, keys: dict[str, str], cut: float, within: float
) -> dict[str, float]:
    """Per pair, seconds from the cut until Redis held a book at least as new as its first
    one back on NATS."""
    in_redis: dict[str, float] = {}
    deadline = cut + within
    while len(in_redis) < len(keys):
        assert time.monotonic() < deadline, f"{len(keys) - len(in_redis)} pairs not back"
        await asyncio.sleep(POLL_SECONDS)
        ask = [s for s in watch.back if s not in in_redis]
        if not ask:
            continue
        now = time.monotonic()
        for symbol, cached in zip(ask, await redis.mget([keys[s] for s in ask]), strict=True):
            if cached is not None and orjson.loads(cached)["lastUpdateId"] >= watch.back[symbol][1]:
                in_redis[symbol] = now - cut
    return in_redis


async def depth_spent(process: Process) -> tuple[float, float]:
    """The service's depth requests answered so far, and the depth weight it spent."""
    answered = await asyncio.to_thread(
        metric, process, "marketpipe_rest_requests_total", endpoint="depth", status="200"
    )
    weight = await asyncio.to_thread(
        metric, process, "marketpipe_rest_weight_spent_total", endpoint="depth"
    )
    return answered, weight


async def measure_reconnect(
    sim: SimulatorProcess,
    cluster: NatsCluster,
    redis_server: RedisServer,
    logdir: Path,
    *,
    depth: int = 20,
    weight_limit: int = 6000,
    streams_per_connection: int = 200,
    settle_seconds: float = 0.0,
    sync_timeout: float = 600.0,
    within: float = 1800.0,
) -> Recovery:
    """Run the service until every book is live, close every stream, and time the recovery
    (raising if some pair is not back within ``within`` seconds)."""
    await asyncio.to_thread(
        sim.admin, "PUT", "settings", {"DEFAULT": {"MaxSpreadPct": 35.0, "Depth": depth}}
    )
    pairs = [s["symbol"] for s in await asyncio.to_thread(sim.admin, "GET", "symbols")]
    prefix = f"r{uuid.uuid4().hex[:8]}."
    env = service_env(
        sim,
        cluster,
        redis_server,
        subject_prefix=prefix,
        settings_url=sim.settings_url,
        rest_weight_limit=str(weight_limit),
        streams_per_connection=str(streams_per_connection),
        log_format="console",
    )
    keys = {s: f"{env['MARKETPIPE_REDIS_PREFIX']}orderbook:{s}" for s in pairs}
    watch = Watch(len(pairs))
    nats = NatsClient(cluster.urls, prefix, name="bench-reconnect")
    await nats.connect()
    redis = aioredis.from_url(redis_server.url)
    began = time.monotonic()
    process = await asyncio.to_thread(start_service, "orderbook", env, logdir, sync_timeout)
    try:
        initial_sync = time.monotonic() - began
        await asyncio.sleep(settle_seconds)  # let the initial sync's weight leave the window
        # Subscribed only now: 2000 pairs publish ~20 000 books/s, not this bench's to read
        # while the books sync.
        await nats.subscribe("status.orderbook.*", watch.on_status)
        await nats.subscribe("orderbook.*", watch.on_book)
        await watch.all_seen.wait()  # the subscriptions reached the service's node
        answered, weight = await depth_spent(process)
        watch.armed = True
        cut = time.monotonic()
        await asyncio.to_thread(sim.fault, type="close", abrupt=True)
        in_redis = await until_cached(redis, watch, keys, cut, within)
        answered_after, weight_after = await depth_spent(process)
    finally:
        await nats.drain()
        await redis.aclose()
        await asyncio.to_thread(process.stop)
    return Recovery(
        pairs=len(pairs),
        nats_seconds=[at - cut for at, _ in watch.back.values()],
        redis_seconds=list(in_redis.values()),
        depth_requests=int(answered_after - answered),
        depth_weight=weight_after - weight,
        budget_per_minute=WeightGate(limit=weight_limit).budget * SNAPSHOT_BUDGET_SHARE,
        initial_sync_seconds=initial_sync,
    )


async def main(args: argparse.Namespace) -> None:
    logdir = Path(args.logdir)
    await asyncio.to_thread(logdir.mkdir, parents=True, exist_ok=True)
    cluster = NatsCluster(size=1).start()
    redis_server = RedisServer().start()
    sim = SimulatorProcess(
        symbols=args.pairs,
        seed=1,
        extra_args=["--levels", str(args.levels), "--weight-limit", str(args.weight_limit)],
    )
    await asyncio.to_thread(sim.start, 180)
    try:
        recovery = await measure_reconnect(
            sim,
            cluster,
            redis_server,
            logdir,
            depth=args.depth,
            weight_limit=args.weight_limit,
            settle_seconds=args.settle,
            sync_timeout=args.sync_timeout,
        )
        print(recovery.report())
    finally:
        sim.stop()
        redis_server.stop()
        cluster.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=20, help="the view's Depth (settings API)")
    parser.add_argument("--levels", type=int, default=1000, help="simulated levels a side")
    parser.add_argument(
        "--weight-limit", type=int, default=6000, help="REST weight per minute (IP)"
    )
    parser.add_argument(
        "--settle", type=float, default=61.0, help="seconds between all live and the cut"
    )
    parser.add_argument(
        "--sync-timeout", type=float, default=1200.0, help="seconds for the initial sync"
    )
    parser.add_argument("--logdir", default="/tmp/marketpipe-bench-reconnect")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

"""Soak: a random fault of marketpipe's own surroundings every 15 s, for 20 minutes, at 200 pairs,
and every message judged.

    .venv/bin/python -m bench.bench_soak [--minutes 20] [--pairs 200] [--every 15] [--seed 1]

Two ``orderbook`` and two ``trades`` replicas on real etcd (``LEADER_TTL_SECONDS`` 3), a 3-node
NATS cluster, Redis and the simulator, whose market only moves when this program steps it, so the
true book of every pair is known at every update id. Replica ``a`` of each service reaches NATS
(nodes 0 and 1), Redis, etcd and the exchange through fault proxies; ``b`` directly; a recorder
reads node 2. Every ``--every`` seconds one fault, chosen at random:

- ``nats_reset``: ``a``'s NATS connections are reset;
- ``nats_kill``: the NATS node ``a``'s orderbook uses is killed (-9), restarted 5 s later;
- ``redis_down``: Redis killed for 6 s; ``redis_stall``: Redis SIGSTOPped for 6 s;
- ``etcd_down``: etcd killed for 6 s (nobody may lead meanwhile);
- ``exchange_down``: the exchange refuses ``a`` for 8 s;
- ``partition``: ``a``'s NATS, Redis and etcd connections stall for 8 s (past the TTL);
- ``streams_closed``: the simulator closes every stream connection at once;
- ``diff_faults``: dropped, duplicated and reordered diffs on a few pairs.

At the end (market stopped, everything healed and quiet): every book that reached NATS equals the
exchange's true book at its update id (after the spread filter and ``Depth``); per pair, no book
of an older epoch after a newer one; every pair's trades on NATS are the exchange's, each once, in
order. Prints the faults injected, the books and trades checked, and every violation found.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from marketpipe.infra.local import EtcdServer, NatsCluster, Process, RedisServer, wait_until
from marketpipe.infra.proxy import FaultProxy
from marketpipe.infra.services import service_env, start_service
from marketpipe.infra.simulator import SimulatorProcess
from marketpipe.transport.nats import NatsClient
from tests.book.truth import true_view

MAX_SPREAD_PCT, DEPTH = 2.0, 20
SETTINGS = {"DEFAULT": {"MaxSpreadPct": MAX_SPREAD_PCT, "Depth": DEPTH}}
TTL = 3
FAULTS = (
    "nats_reset",
    "nats_kill",
    "redis_down",
    "redis_stall",
    "etcd_down",
    "exchange_down",
    "partition",
    "streams_closed",
    "diff_faults",
)
Levels = list[list[str]]
RECENT_TRADES = 100  # per pair after each step: far more than one step of the market makes


def view_hash(bids: Levels, asks: Levels) -> int:
    return hash(orjson.dumps([bids, asks]))


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.logdir = Path(tempfile.mkdtemp(prefix="marketpipe-soak-"))
        self.cluster = NatsCluster(no_advertise=True)
        self.redis = RedisServer()
        self.etcd = EtcdServer()
        self.sim = SimulatorProcess(
            symbols=args.pairs,
            seed=args.seed,
            extra_args=["--levels", "100", "--paused", "--weight-limit", "10000000"],
        )
        # 20 minutes of 200 books are too many to keep whole: a hash of each true view, and of
        # each published one, by (symbol, update id)
        self.truth: dict[str, dict[int, int]] = defaultdict(dict)
        self.books: list[tuple[str, int, int, int]] = []  # symbol, update id, epoch, view hash
        self.trades: list[dict[str, Any]] = []
        # the simulator keeps only the last 1000 trades of a pair: collect them as they happen
        self.true_trades: dict[str, dict[int, None]] = defaultdict(dict)
        self.faults: Counter[str] = Counter()
        self.replicas: list[Process] = []
        self.proxies: dict[str, FaultProxy] = {}

    # --- set-up ---

    def start(self) -> None:
        self.cluster.start()
        self.redis.start()
        self.etcd.start()
        self.sim.start(timeout=120)
        self.sim.admin("PUT", "settings", SETTINGS)
        ports = self.cluster.client_ports
        self.proxies = {
            "nats0": FaultProxy(target_port=ports[0]).start(),
            "nats1": FaultProxy(target_port=ports[1]).start(),
            "redis": FaultProxy(target_port=self.redis.port).start(),
            "etcd": FaultProxy(target_port=self.etcd.port).start(),
            "exchange": FaultProxy(target_port=self.sim.port).start(),
        }
        self.prefix = f"soak{uuid.uuid4().hex[:6]}."
        for service in ("orderbook", "trades"):
            common = {
                "etcd_endpoints": self.etcd.url,
                "leader_ttl_seconds": str(TTL),
                "subject_prefix": self.prefix,
                "settings_url": self.sim.settings_url,
                "rest_weight_limit": "10000000",
                "rest_weight_share": "1.0",
                "silent_connection_seconds": "10",
                "streams_per_connection": "100",
            }
            direct = service_env(self.sim, self.cluster, self.redis, **common)
            direct["MARKETPIPE_NATS_URLS"] = ",".join(self.cluster.urls[:2])
            proxied = {
                **direct,
                "MARKETPIPE_NATS_URLS": ",".join(
                    self.proxies[n].url("nats") for n in ("nats0", "nats1")
                ),
                "MARKETPIPE_REDIS_URL": self.proxies["redis"].url("redis") + "/0",
                "MARKETPIPE_ETCD_ENDPOINTS": self.proxies["etcd"].url("http"),
                "MARKETPIPE_BINANCE_REST_URL": self.proxies["exchange"].url("http"),
                "MARKETPIPE_BINANCE_WS_URL": self.proxies["exchange"].url("ws"),
            }
            for name, env in (("a", proxied), ("b", direct)):
                logdir = self.logdir / f"{service}-{name}"
                logdir.mkdir()
                # alive is enough: the books sync once the market moves (run() steps it)
                self.replicas.append(start_service(service, env, logdir, 120, probe="livez"))

    async def record(self, http: aiohttp.ClientSession, symbols: list[str]) -> None:
        async def one(symbol: str) -> None:
            async with http.get(f"{self.sim.url}/admin/book", params={"symbol": symbol}) as r:
                book = orjson.loads(await r.read())
            view = true_view(book["bids"], book["asks"], MAX_SPREAD_PCT, DEPTH)
            self.truth[symbol][book["lastUpdateId"]] = view_hash(*view)
            params = {"symbol": symbol, "limit": str(RECENT_TRADES)}
            async with http.get(f"{self.sim.url}/admin/trades", params=params) as r:
                recent = orjson.loads(await r.read())
            self.true_trades[symbol].update((t["t"], None) for t in recent)

        await asyncio.gather(*(one(s) for s in symbols))

    async def step(self, http: aiohttp.ClientSession, symbols: list[str]) -> None:
        async with http.post(f"{self.sim.url}/admin/step", params={"n": "1"}) as r:
            r.raise_for_status()
        await self.record(http, symbols)

    # --- faults ---

    async def fault(self, kind: str) -> None:
        self.faults[kind] += 1
        p = self.proxies
        run = asyncio.to_thread
        if kind == "nats_reset":
            for proxy in (p["nats0"], p["nats1"]):
                await run(proxy.reset)
        elif kind == "nats_kill":
            node = self.rng.choice([0, 1])
            await run(self.cluster.nodes[node].kill)
            await asyncio.sleep(5)
            await run(self.cluster.nodes[node].start)
            await run(wait_until, self.cluster.routed, 20, "nats routes")
        elif kind in ("redis_down", "etcd_down"):
            server = self.redis.process if kind == "redis_down" else self.etcd.process
            assert server is not None
            await run(server.kill)
            await asyncio.sleep(6)
            await run(server.start)
        elif kind == "redis_stall":
            assert self.redis.process is not None
            self.redis.process.pause()
            await asyncio.sleep(6)
            self.redis.process.resume()
        elif kind == "exchange_down":
            await run(p["exchange"].refuse)
            await asyncio.sleep(8)
            await run(p["exchange"].heal)
        elif kind == "partition":
            cut = [p["nats0"], p["nats1"], p["redis"], p["etcd"]]
            await asyncio.gather(*(run(x.stall) for x in cut))
            await asyncio.sleep(8)
            await asyncio.gather(*(run(x.heal) for x in cut))
        elif kind == "streams_closed":
            await run(self.sim.fault, type="close", abrupt=True)
        elif kind == "diff_faults":
            symbols = self.rng.sample(self.symbols, 3)
            for fault, symbol in zip(("drop", "duplicate", "reorder"), symbols, strict=True):
                await run(self.sim.fault, type=fault, symbol=symbol, count=1)

    # --- the run ---

    async def run(self) -> None:
        self.symbols = [s["symbol"] for s in self.sim.admin("GET", "symbols")]
        nats = NatsClient(self.cluster.urls[2:], self.prefix, name="soak-recorder")
        await nats.connect()

        async def on_book(_subject: str, data: bytes) -> None:
            book = orjson.loads(data)
            self.books.append(
                (
                    book["symbol"],
                    book["lastUpdateId"],
                    book["epoch"],
                    view_hash(book["bids"], book["asks"]),
                )
            )

        async def on_trade(_subject: str, data: bytes) -> None:
            self.trades.append(orjson.loads(data))

        await nats.subscribe("orderbook.*", on_book)
        await nats.subscribe("trades.*", on_trade)
        await nats.flush()
        async with aiohttp.ClientSession() as http:
            await self.record(http, self.symbols)
            # every book live before the first fault
            deadline = time.monotonic() + 120
            while len({b[0] for b in self.books}) < len(self.symbols):
                assert time.monotonic() < deadline, "books never all live"
                await self.step(http, self.symbols)
                await asyncio.sleep(0.15)
            ends = time.monotonic() + self.args.minutes * 60
            next_fault = time.monotonic() + self.args.every
            pending: asyncio.Task[None] | None = None
            while time.monotonic() < ends:
                if time.monotonic() >= next_fault and (pending is None or pending.done()):
                    kind = self.rng.choice(FAULTS)
                    print(f"{time.strftime('%H:%M:%S')} fault {kind}", flush=True)
                    pending = asyncio.create_task(self.fault(kind))
                    next_fault = time.monotonic() + self.args.every
                await self.step(http, self.symbols)
                await asyncio.sleep(0.15)
            if pending is not None:
                await pending
            for proxy in self.proxies.values():
                await asyncio.to_thread(proxy.heal)
            # quiet: every pair catches up with the market as it stands
            settle = time.monotonic() + 60
            while time.monotonic() < settle:
                latest = {symbol: update_id for symbol, update_id, _, _ in self.books}
                if all(latest.get(s) == max(self.truth[s]) for s in self.symbols):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)
        await nats.drain()

    # --- the verdict ---

    def judge(self) -> list[str]:
        problems: list[str] = []
        newest: dict[str, int] = {}
        for symbol, update_id, epoch, published in self.books:
            if epoch < newest.get(symbol, 0):
                problems.append(f"{symbol}: epoch {epoch} after {newest[symbol]}")
            newest[symbol] = max(newest.get(symbol, 0), epoch)
            truth = self.truth[symbol].get(update_id)
            if truth is None:
                problems.append(f"{symbol}: update id {update_id} never existed")
            elif truth != published:
                problems.append(f"{symbol}: book at {update_id} is not the true one")
        by_symbol: dict[str, list[tuple[int, int]]] = defaultdict(list)  # (trade id, epoch)
        for trade in self.trades:
            by_symbol[trade["s"]].append((trade["t"], trade.get("epoch", 0)))
        for symbol, seen in by_symbol.items():
            ids = [t for t, _ in seen]
            truth_ids = sorted(t for t in self.true_trades[symbol] if t >= ids[0])
            if ids != truth_ids:
                missing = sorted(set(truth_ids) - set(ids))
                repeated = len(ids) - len(set(ids))
                at = next(
                    (i for i, (a, b) in enumerate(zip(ids, truth_ids, strict=False)) if a != b), 0
                )
                problems.append(
                    f"{symbol}: trades differ ({len(missing)} missing, {repeated} repeated;"
                    f" from the {at}th (trade id, epoch): {seen[max(0, at - 3) : at + 3]})"
                )
        return problems

    def stop(self) -> None:
        for process in self.replicas:
            process.stop()
        for proxy in self.proxies.values():
            proxy.stop()
        self.sim.stop()
        self.etcd.stop()
        self.redis.stop()
        self.cluster.stop()


async def main(args: argparse.Namespace) -> None:
    soak = Soak(args)
    await asyncio.to_thread(soak.start)
    try:
        began = time.monotonic()
        await soak.run()
        print(f"\nsoak: {args.pairs} pairs, {(time.monotonic() - began) / 60:.1f} min")
        print("faults: " + ", ".join(f"{k} {n}" for k, n in sorted(soak.faults.items())))
        problems = await asyncio.to_thread(soak.judge)
        print(f"books judged: {len(soak.books)}; trades judged: {len(soak.trades)}")
        print(f"violations: {len(problems)}")
        for problem in problems[:50]:
            print(f"  {problem}")
        print(f"logs: {soak.logdir}")
    finally:
        await asyncio.to_thread(soak.stop)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

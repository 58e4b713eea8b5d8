"""Record and replay, end to end: the replayed NATS stream equals the recorded one, message for
message, and the replayed exchange drives ``orderbook`` to the same books.

    .venv/bin/python -m bench.bench_record_replay [--pairs 200] [--seconds 60]

1. The simulator (``--pairs``), a 1-node NATS server, Redis and the orderbook service run;
   once every book is live, ``marketpipe record nats`` (``orderbook.*``, ``delta.orderbook.*``)
   and ``marketpipe record exchange`` (every pair's ``@depth@100ms`` frames and a REST snapshot
   each) record for ``--seconds``. The service stops.
2. ``marketpipe replay`` of the NATS recording, as fast as it goes, to a subscriber: the
   sequence of (subject, payload) must equal the recording's.
3. ``marketpipe replay --to exchange`` of the exchange recording at the recorded pace, and a
   fresh orderbook service on it: every book it publishes whose (symbol, ``lastUpdateId``) the
   recorded service also published must have the same levels, and most of them must be
   comparable (the two services sync at different moments and throttle independently).

Prints sizes, rates and the comparisons; ``tests/services/test_record_replay.py`` runs the
same at a small scale and asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson

from marketpipe.infra.local import NatsCluster, Process, RedisServer, _http_ok, free_port
from marketpipe.infra.services import service_env, start_service
from marketpipe.infra.simulator import SimulatorProcess
from marketpipe.recording.files import read_records, recording_files
from marketpipe.recording.format import Kind

WEIGHT_LIMIT = "10000000"
QUIET_SECONDS = 3.0


@dataclass
class Report:
    pairs: int
    seconds: float
    nats_recorded: int = 0
    nats_replayed: int = 0
    nats_equal: bool = False
    nats_bytes: int = 0  # payload bytes recorded
    nats_file_bytes: int = 0
    exchange_frames: int = 0
    exchange_file_bytes: int = 0
    books_recorded: int = 0
    books_replayed: int = 0
    books_compared: int = 0
    books_different: int = 0
    replay_seconds: float = 0.0


def digest(*parts: bytes) -> bytes:
    return hashlib.blake2b(b"\0".join(parts), digest_size=16).digest()


def levels_digest(payload: bytes) -> tuple[tuple[str, int], bytes]:
    book = orjson.loads(payload)
    key = (book["symbol"], book["lastUpdateId"])
    return key, digest(orjson.dumps([book["bids"], book["asks"]]))


def marketpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "marketpipe", *args]


async def run_command(argv: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, env={**os.environ, **env}, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
        code = await process.wait()
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[2:4])} exited with {code}; see {log}")


class Collector:
    """What a NATS subscriber receives on one subscription, and when it last received."""

    def __init__(self) -> None:
        self.digests: list[bytes] = []
        self.books: dict[tuple[str, int], bytes] = {}
        self.last_at = time.monotonic()

    async def on_message(self, msg: Any) -> None:
        self.last_at = time.monotonic()
        self.digests.append(digest(msg.subject.encode(), msg.data))
        if msg.subject.partition(".")[2].startswith("orderbook."):  # not delta.orderbook.
            key, levels = levels_digest(msg.data)
            self.books[key] = levels

    async def quiet(self, seconds: float, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() - self.last_at < seconds:
            if time.monotonic() > deadline:
                raise TimeoutError("NATS never went quiet")
            await asyncio.sleep(0.2)


async def record_and_replay(
    pairs: int, seconds: float, workdir: Path, levels: int = 300, rate: float = 10.0
) -> Report:
    report = Report(pairs, seconds)
    cluster = NatsCluster(size=1).start()
    redis_server = RedisServer().start()
    sim = SimulatorProcess(
        symbols=pairs,
        seed=5,
        extra_args=["--levels", str(levels), "--rate", str(rate), "--weight-limit", WEIGHT_LIMIT],
    )
    await asyncio.to_thread(sim.start, 120)
    started: list[Process] = []
    nc = await nats.connect(servers=cluster.urls, pending_size=1024 * 1024 * 1024)
    try:
        symbols = [s["symbol"] for s in await asyncio.to_thread(sim.admin, "GET", "symbols")]
        live_env = service_env(
            sim, cluster, redis_server, subject_prefix="rec.", rest_weight_limit=WEIGHT_LIMIT
        )
        live = await asyncio.to_thread(start_service, "orderbook", live_env, workdir, 600)
        started.append(live)
        await asyncio.sleep(2)  # past the first burst of every pair's book
        tools = {**live_env, "MARKETPIPE_LOG_FORMAT": "console"}
        duration = str(seconds)
        await asyncio.gather(
            run_command(
                marketpipe(
                    *("record", "nats", "--out", str(workdir / "nats"), "--seconds", duration),
                    *("--subjects", "orderbook.*,delta.orderbook.*"),
                ),
                tools,
                workdir / "record-nats.log",
            ),
            run_command(
                marketpipe(
                    *("record", "exchange", "--out", str(workdir / "exchange")),
                    *("--seconds", duration, "--symbols", ",".join(symbols)),
                ),
                tools,
                workdir / "record-exchange.log",
            ),
        )
        await asyncio.to_thread(live.stop)
        started.remove(live)

        # 1. the NATS recording, replayed as fast as it goes
        recorded = []
        books: dict[tuple[str, int], bytes] = {}
        for record in read_records(workdir / "nats"):
            recorded.append(digest(record.name.encode(), record.payload))
            report.nats_bytes += len(record.payload)
            if record.name.startswith("rec.orderbook."):
                key, book_levels = levels_digest(record.payload)
                books[key] = book_levels
        report.nats_recorded, report.books_recorded = len(recorded), len(books)
        report.nats_file_bytes = sum(p.stat().st_size for p in recording_files(workdir / "nats"))
        replayed = Collector()
        await nc.subscribe("rec.>", cb=replayed.on_message, pending_msgs_limit=10_000_000)
        await nc.flush()
        began = time.monotonic()
        await run_command(
            marketpipe("replay", str(workdir / "nats"), "--speed", "0"),
            tools,
            workdir / "replay-nats.log",
        )
        await replayed.quiet(1.0, within=120)
        report.replay_seconds = time.monotonic() - began
        report.nats_replayed = len(replayed.digests)
        report.nats_equal = replayed.digests == recorded

        # 2. the exchange recording, served as an exchange, and a fresh orderbook on it
        for record in read_records(workdir / "exchange"):
            report.exchange_frames += record.kind is Kind.FRAME
        report.exchange_file_bytes = sum(
            p.stat().st_size for p in recording_files(workdir / "exchange")
        )
        port = free_port()
        exchange = Process(
            name="replay-exchange",
            argv=marketpipe(
                *("replay", str(workdir / "exchange"), "--to", "exchange", "--port", str(port)),
                *("--speed", "1", "--weight-limit", WEIGHT_LIMIT),
            ),
            healthy=functools.partial(_http_ok, f"http://127.0.0.1:{port}/healthz"),
            log_path=workdir / "replay-exchange.log",
            env=tools,
        )
        await asyncio.to_thread(exchange.start, 60)
        started.append(exchange)
        fresh = Collector()
        await nc.subscribe("rep.orderbook.*", cb=fresh.on_message, pending_msgs_limit=10_000_000)
        await nc.flush()
        replay_env = service_env(
            SimulatorProcess(port=port),  # only its URLs: the replay serves that port
            cluster,
            redis_server,
            subject_prefix="rep.",
            rest_weight_limit=WEIGHT_LIMIT,
        )
        (workdir / "replayed").mkdir(exist_ok=True)
        again = await asyncio.to_thread(
            start_service, "orderbook", replay_env, workdir / "replayed", 600
        )
        started.append(again)
        await asyncio.sleep(seconds)
        await fresh.quiet(QUIET_SECONDS, within=seconds + 120)
        report.books_replayed = len(fresh.books)
        for key, book_levels in fresh.books.items():
            if key in books:
                report.books_compared += 1
                report.books_different += book_levels != books[key]
    finally:
        await nc.close()
        for process in reversed(started):
            await asyncio.to_thread(process.stop)
        await asyncio.to_thread(sim.stop)
        redis_server.stop()
        cluster.stop()
    return report


def print_report(report: Report) -> None:
    mb = 2**20
    print(f"{report.pairs} pairs, {report.seconds:.0f} s recorded")
    print(
        f"  NATS: {report.nats_recorded} messages, {report.nats_bytes / mb:.1f} MB of payloads "
        f"in {report.nats_file_bytes / mb:.1f} MB of files "
        f"({report.nats_bytes / max(1, report.nats_file_bytes):.1f}x)"
    )
    print(
        f"  replayed onto NATS in {report.replay_seconds:.1f} s: {report.nats_replayed} messages, "
        f"{'equal to the recording, message for message' if report.nats_equal else 'DIFFERENT'}"
    )
    print(
        f"  exchange: {report.exchange_frames} frames in {report.exchange_file_bytes / mb:.1f} MB"
    )
    share = report.books_compared / max(1, report.books_replayed)
    print(
        f"  replayed exchange -> orderbook: {report.books_replayed} books, {report.books_compared} "
        f"({share:.0%}) also published by the recorded service, {report.books_different} differ"
    )


async def main(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    print_report(await record_and_replay(args.pairs, args.seconds, workdir, args.levels))
    print(f"\nrecordings and logs: {workdir}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--levels", type=int, default=300, help="simulated levels a side")
    parser.add_argument("--workdir", default="/tmp/marketpipe-bench-record-replay")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

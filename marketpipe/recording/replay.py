"""``marketpipe replay``: a recording back onto NATS, or served as a Binance-protocol exchange.

    marketpipe replay day/books [--speed 1]                       # NATS records onto NATS
    marketpipe replay day/exchange --to exchange --port 9000 [--speed 1]

``--speed``: 1 replays at the recorded pace, 2 twice as fast, 0 as fast as possible. To NATS,
each message goes out on its recorded subject with its recorded payload, in the recorded order.
As an exchange, the simulator serves the recording (``marketpipe.simulator.source``): the
frames on their streams at their recorded offsets, REST depth snapshots of the books they lead
to, and the simulator's other endpoints and admin API (faults included); point a service at it
as at ``exchange-sim``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import nats
from aiohttp import web

from marketpipe.config import Settings
from marketpipe.logs import get_logger
from marketpipe.recording.exchange import ReplayExchange
from marketpipe.recording.files import read_records
from marketpipe.recording.format import Kind
from marketpipe.simulator.server import Simulator
from marketpipe.simulator.state import SimConfig

log = get_logger(__name__)

FLUSH_EVERY = 1000  # messages between waits for the server, at full speed


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Replay a recording: its NATS messages back onto NATS, in order, or its exchange frames "
        "served as a Binance-protocol exchange on --port. See docs/recording.md."
    )
    add = parser.add_argument
    add("recording", help="a recording's base path (or one of its files)")
    add("--to", choices=["nats", "exchange"], default="nats", help="where to replay it")
    add("--speed", type=float, default=1.0, help="1: recorded pace, 0: as fast as possible")
    add("--host", default="127.0.0.1", help="exchange: address to bind (default 127.0.0.1)")
    add("--weight-limit", type=int, default=6000, help="exchange: REST weight per minute")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.speed < 0:
        print("marketpipe replay: --speed must be >= 0")
        return 2
    if args.to == "nats":
        sent = asyncio.run(replay_nats(args.recording, settings.nats_urls, args.speed))
        log.info("replayed", messages=sent)
        return 0
    source = ReplayExchange(read_records(args.recording), args.speed)
    simulator = Simulator(SimConfig(source=source, weight_limit=args.weight_limit))
    log.info("replay_exchange_starting", port=args.port, symbols=len(source.symbols()))
    web.run_app(simulator.app(), host=args.host, port=args.port, print=None, shutdown_timeout=2.0)
    return 0


async def replay_nats(recording: str, urls: list[str], speed: float) -> int:
    """Publish every NATS record; returns how many."""
    nc = await nats.connect(servers=urls, pending_size=256 * 1024 * 1024)
    sent = 0
    first_ns: int | None = None
    started = time.monotonic()
    try:
        for record in read_records(recording):
            if record.kind is not Kind.NATS:
                continue
            if first_ns is None:
                first_ns = record.at_ns
            if speed:
                wait = (record.at_ns - first_ns) / 1e9 / speed - (time.monotonic() - started)
                if wait > 0:
                    await asyncio.sleep(wait)
            await nc.publish(record.name, record.payload)
            sent += 1
            if not speed and sent % FLUSH_EVERY == 0:
                await nc.flush()
        await nc.flush()
    finally:
        await nc.close()
    return sent

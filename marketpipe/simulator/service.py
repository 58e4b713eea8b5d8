"""``marketpipe exchange-sim``: the Binance-protocol exchange simulator on one HTTP port."""

from __future__ import annotations

import argparse
import asyncio

import orjson
from aiohttp import web

from marketpipe.config import Settings
from marketpipe.logs import get_logger
from marketpipe.simulator.faults import FaultError, parse_fault
from marketpipe.simulator.server import Simulator
from marketpipe.simulator.state import SimConfig

log = get_logger("marketpipe.simulator")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve Binance Spot REST (/api/v3/...) and WebSocket streams (/ws, /stream), the assets "
        "(/assets) and settings (/settings) APIs and an admin API (/admin/...) on --port. "
        "See docs/simulator.md."
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--symbols", type=int, default=20, help="number of symbols (default 20)")
    add("--seed", type=int, default=1, help="random seed: same seed, same market (default 1)")
    add("--rate", type=float, default=10.0, help="diff events per second per symbol (default 10)")
    add("--levels", type=int, default=2000, help="target book levels per side (default 2000)")
    add("--weight-limit", type=int, default=6000, help="REST weight per minute per client")
    add("--ban-seconds", type=float, default=120.0, help="418 ban length (default 120)")
    add("--ping-seconds", type=float, default=20.0, help="server ping interval (default 20)")
    add("--pong-timeout", type=float, default=60.0, help="close without pong after (default 60)")
    add("--max-age", type=float, default=86_400.0, help="connection lifetime s (default 24 h)")
    add("--max-streams", type=int, default=1024, help="streams per connection (default 1024)")
    add("--paused", action="store_true", help="start with the market clock stopped")
    add(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help='standing fault, e.g. \'{"type":"drop","symbol":"BTCUSDT","probability":0.01}\'',
    )


def build(args: argparse.Namespace) -> Simulator:
    faults = []
    for text in args.fault:
        try:
            faults.append(parse_fault(orjson.loads(text)))
        except (FaultError, orjson.JSONDecodeError) as exc:
            raise SystemExit(f"marketpipe exchange-sim: bad --fault {text!r}: {exc}") from None
    return Simulator(
        SimConfig(
            symbols=args.symbols,
            seed=args.seed,
            rate=args.rate,
            levels=args.levels,
            weight_limit=args.weight_limit,
            ban_seconds=args.ban_seconds,
            ping_seconds=args.ping_seconds,
            pong_timeout_seconds=args.pong_timeout,
            max_connection_age_seconds=args.max_age,
            max_streams=args.max_streams,
            paused=args.paused,
            faults=faults,
        )
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.symbols < 1 or args.rate <= 0 or args.levels < 10:
        print("marketpipe exchange-sim: need --symbols >= 1, --rate > 0, --levels >= 10")
        return 2
    simulator = build(args)
    log.info("exchange_sim_starting", port=args.port, symbols=args.symbols, seed=args.seed)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a dependency; this is only a fallback
        pass
    web.run_app(
        simulator.app(),
        host=args.host,
        port=args.port,
        print=None,
        handle_signals=True,
        shutdown_timeout=2.0,
    )
    return 0

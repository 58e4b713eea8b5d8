"""``marketpipe <service> [--port PORT] [--config FILE]``.

Each subcommand lives in its own module exposing ``configure_parser(parser)`` and
``run(args, settings) -> int``; modules are imported only when their command is chosen.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from marketpipe.config import ConfigError, Settings, load_settings
from marketpipe.logs import configure_logging

# name -> (module, one-line help, default --port)
COMMANDS: dict[str, tuple[str, str, int]] = {
    "orderbook": ("marketpipe.services.orderbook", "keep exact local books, publish them", 8081),
    "trades": ("marketpipe.services.trades", "normalise and publish trades", 8082),
    "tickers": ("marketpipe.services.tickers", "normalise and publish 24h tickers", 8083),
    "markets": ("marketpipe.services.markets", "aggregate all pairs into market snapshots", 8084),
    "gateway": ("marketpipe.gateway.service", "WebSocket gateway for end users", 8080),
    "exchange-sim": (
        "marketpipe.simulator.service",
        "the built-in Binance-protocol simulator",
        9000,
    ),
    "up": ("marketpipe.up", "the whole stack on one machine", 8080),
    "status": ("marketpipe.ha.status", "instances, roles and shards, from etcd", 0),
    "record": ("marketpipe.recording.record", "record NATS subjects or exchange frames", 0),
    "replay": (
        "marketpipe.recording.replay",
        "replay a recording onto NATS or as an exchange",
        9000,
    ),
}


class CommandModule(Protocol):
    def configure_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, settings: Settings) -> int: ...


def _load(name: str) -> CommandModule:
    return cast(CommandModule, importlib.import_module(COMMANDS[name][0]))


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marketpipe",
        description="Binance Spot market data: exact books, trades, tickers, markets over NATS.",
        epilog="Settings come from --config (YAML or TOML) and MARKETPIPE_<KEY> environment "
        "variables, which override the file. See docs/configuration.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<service>", required=True)
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (_module, help_text, port) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        what = {
            "up": "the gateway's port: web page and WebSocket",
            "gateway": "WebSocket, web page, probes and metrics",
            "exchange-sim": "REST, WebSocket streams and admin API",
            "replay": "with --to exchange: the replayed exchange's REST and streams",
            "record": "not used",
        }.get(name, "probes and metrics")
        p.add_argument("--port", type=int, default=port, help=f"HTTP port: {what} (default {port})")
        p.add_argument("--config", metavar="FILE", help="YAML or TOML settings file")
        if name == chosen:
            _load(name).configure_parser(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"marketpipe: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    return _load(args.command).run(args, settings)


if __name__ == "__main__":
    raise SystemExit(main())

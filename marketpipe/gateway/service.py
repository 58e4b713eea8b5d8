"""``marketpipe gateway --port N``: the WebSocket gateway for end users (DESIGN §4).

The WebSocket endpoint (``/ws``, ``/``), the live page (GET ``/``) and the probes
(``/livez``, ``/readyz``, ``/metrics``) share the one port. Every instance serves (no
election): run as many as the load needs behind a load balancer.
"""

from __future__ import annotations

import argparse

from marketpipe.config import Settings
from marketpipe.gateway.protocol import KnownSymbols
from marketpipe.gateway.server import Gateway
from marketpipe.services.runtime import ServiceContext, run_service


class GatewayService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.symbols = KnownSymbols()
        self.gateway = Gateway(ctx.settings, ctx.nats, ctx.cache, self.symbols)
        self.gateway.add_routes(ctx.app)

    async def start(self) -> None:
        self.gateway.start()

    async def stop(self) -> None:
        await self.gateway.stop()

    def ready(self) -> bool:
        return self.gateway.ready()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Limits, auth tokens and the Origin allow-list come from the GATEWAY_* settings; "
        "see docs/gateway.md."
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    return run_service("gateway", args, settings, GatewayService, elect=False)

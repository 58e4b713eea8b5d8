"""``marketpipe gateway --port N``: the WebSocket gateway for end users (DESIGN §4).

The WebSocket endpoint (``/ws``, ``/``), the live page (GET ``/``) and the probes
(``/livez``, ``/readyz``, ``/metrics``) share the one port. Every instance serves (no
election): run as many as the load needs behind a load balancer. The symbols clients may name
come from the same assets source the producing services use (``ASSETS_URL``, else the
exchange's pair list), polled so that new pairs are served without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from typing import Any

from aiohttp import web

from marketpipe.config import Settings
from marketpipe.gateway.protocol import KnownSymbols
from marketpipe.gateway.server import Gateway
from marketpipe.ha.election import ETCD_ERRORS
from marketpipe.ha.status import read_status
from marketpipe.logs import get_logger
from marketpipe.services.feed import make_rest
from marketpipe.services.runtime import ServiceContext, run_service
from marketpipe.sources.assets import AssetsSource, Universe
from marketpipe.supervision import Supervised

log = get_logger(__name__)

STATUS_SECONDS = 2.0


class GatewayService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.symbols = KnownSymbols()
        self.assets = AssetsSource(ctx.settings, make_rest(ctx), self._universe_changed)
        self.gateway = Gateway(ctx.settings, ctx.nats, ctx.cache, self.symbols)
        self.gateway.add_routes(ctx.app)
        self.publishers = StatusCache(ctx.settings.etcd_endpoints)
        ctx.app.router.add_get("/status", self.publishers.handle)
        self._tasks = ctx.tasks
        self._assets_task: Supervised | None = None

    def _universe_changed(self, universe: Universe) -> None:
        self.symbols.replace(universe.symbols)

    async def start(self) -> None:
        self._assets_task = self._tasks.spawn("gateway-assets", self.assets.run)
        self.gateway.start()

    async def stop(self) -> None:
        await self.gateway.stop()
        if self._assets_task is not None:
            await self._assets_task.stop()

    def ready(self) -> bool:
        return self.gateway.ready()


class StatusCache:
    """``GET /status``: ``marketpipe status --json`` (who leads what), read from etcd at most
    every :data:`STATUS_SECONDS`; ``{}`` without ``ETCD_ENDPOINTS``."""

    def __init__(self, endpoints: list[str]) -> None:
        self._endpoints = endpoints
        self._status: dict[str, Any] = {}
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    async def handle(self, _request: web.Request) -> web.Response:
        async with self._lock:
            if self._endpoints and time.monotonic() - self._read_at > STATUS_SECONDS:
                self._read_at = time.monotonic()
                try:
                    self._status = await read_status(self._endpoints)
                except ETCD_ERRORS as exc:
                    log.warning("status_unavailable", error=repr(exc))
        return web.json_response(self._status)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Limits, auth tokens and the Origin allow-list come from the GATEWAY_* settings; "
        "see docs/gateway.md."
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    return run_service("gateway", args, settings, GatewayService, elect=False)

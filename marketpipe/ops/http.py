"""Probes and metrics over HTTP: ``/livez``, ``/readyz`` (or ``/live``, ``/read``), ``/metrics``.

Two ways in:

- ``add_probe_routes(app, ready)`` mounts the routes on an application the caller owns (the
  gateway serves them beside its WebSocket endpoint);
- ``ProbeServer(port, ready)`` serves them alone (``await start()`` / ``await stop()``).

``ready`` is the service's own answer ("connected to what I need and, as leader, books
synced"); it must be cheap and must not raise. Liveness says the event loop answers and, given
``live``, that the instance has not failed (a supervised task that could not be restarted).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from marketpipe.logs import get_logger
from marketpipe.ops import metrics as _metrics  # noqa: F401  (every metric shows from the start)

log = get_logger("marketpipe.ops.http")

ReadyCheck = Callable[[], bool]


def add_probe_routes(
    app: web.Application, ready: ReadyCheck, live: ReadyCheck | None = None
) -> None:
    async def liveness(_request: web.Request) -> web.Response:
        if live is None or live():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="failed\n")

    async def readiness(_request: web.Request) -> web.Response:
        try:
            is_ready = ready()
        except Exception:  # a broken check must read as "not ready", not as a 500 storm
            log.exception("readiness check failed")
            is_ready = False
        if is_ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    for path in ("/livez", "/live"):
        app.router.add_get(path, liveness)
    for path in ("/readyz", "/read"):
        app.router.add_get(path, readiness)
    app.router.add_get("/metrics", metrics)


class ProbeServer:
    """A standalone HTTP server for the probe routes (port 0: the kernel picks; see ``.port``)."""

    def __init__(
        self,
        port: int,
        ready: ReadyCheck,
        host: str = "0.0.0.0",
        app: web.Application | None = None,
        live: ReadyCheck | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.app = app if app is not None else web.Application()
        add_probe_routes(self.app, ready, live)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        log.info("http listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

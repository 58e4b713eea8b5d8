"""The simulator's aiohttp application: one port for the Binance REST API (``rest``), the
WebSocket streams (``streams``), and the admin API with the assets and settings documents
(``admin``), each a thin shell over the pure market model (``market``, ``history``), stream
protocol, limits (``protocol``) and fault plans (``faults``)."""

from __future__ import annotations

from aiohttp import web

from marketpipe.simulator.admin import AdminApi
from marketpipe.simulator.params import errors_middleware
from marketpipe.simulator.rest import RestApi
from marketpipe.simulator.state import Exchange, SimConfig
from marketpipe.simulator.streams import StreamHub


class Simulator:
    """The exchange and its three surfaces."""

    def __init__(self, config: SimConfig) -> None:
        self.exchange = Exchange(config)
        self.hub = StreamHub(config, self.exchange)
        self.rest = RestApi(self.exchange)
        self.admin = AdminApi(self.exchange, self.hub)

    def app(self) -> web.Application:
        # Long combined-stream URLs (up to 1024 names) exceed aiohttp's default 8 KB line.
        app = web.Application(
            middlewares=[errors_middleware(self.exchange.rest_log)],
            handler_args={"max_line_size": 64 * 1024},
        )
        app.add_routes(self.rest.routes() + self.hub.routes() + self.admin.routes())
        app.on_startup.append(self.hub.start)
        app.on_shutdown.append(self.hub.stop)
        return app

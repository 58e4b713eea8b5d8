"""marketpipe services as child processes pointed at local servers, for tests and benchmarks."""

from __future__ import annotations

import functools
import sys
import urllib.request
import uuid
from pathlib import Path

from marketpipe.infra.local import NatsCluster, Process, RedisServer, _http_ok, free_port
from marketpipe.infra.simulator import SimulatorProcess


def service_env(
    sim: SimulatorProcess, cluster: NatsCluster, redis_server: RedisServer, **extra: str
) -> dict[str, str]:
    """``MARKETPIPE_*`` for a leader without etcd, on its own Redis prefix; ``extra`` overrides."""
    env = {
        "MARKETPIPE_NATS_URLS": ",".join(cluster.urls),
        "MARKETPIPE_REDIS_URL": redis_server.url,
        "MARKETPIPE_REDIS_PREFIX": f"mp{uuid.uuid4().hex[:8]}:",
        "MARKETPIPE_BINANCE_REST_URL": sim.rest_url,
        "MARKETPIPE_BINANCE_WS_URL": sim.ws_url,
        "MARKETPIPE_ASSETS_URL": sim.assets_url,
        "MARKETPIPE_ETCD_ENDPOINTS": "",
    }
    env.update({f"MARKETPIPE_{k.upper()}": v for k, v in extra.items()})
    return env


def start_service(
    name: str, env: dict[str, str], logdir: Path, timeout: float = 30, probe: str = "readyz"
) -> Process:
    """``python -m marketpipe <name> --port N``, returned once ``/<probe>`` answers 200."""
    port = free_port()
    process = Process(
        name=name,
        argv=[sys.executable, "-m", "marketpipe", name, "--port", str(port)],
        healthy=functools.partial(_http_ok, f"http://127.0.0.1:{port}/{probe}"),
        log_path=logdir / f"{name}.log",
        env=env,
    )
    process.start(timeout=timeout)
    return process


def service_port(process: Process) -> int:
    """The ``--port`` a process from :func:`start_service` was given."""
    return int(process.argv[process.argv.index("--port") + 1])


def metric(process: Process, name: str, **labels: str) -> float:
    """One sample of the service's ``/metrics`` (0 when absent)."""
    url = f"http://127.0.0.1:{service_port(process)}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    head = f"{name}{{{want}}}" if want else name
    for line in text.splitlines():
        if line.startswith(head + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0

"""End-to-end plumbing for the trades, tickers and markets tests: a service as a subprocess
pointed at the simulator, the NATS cluster and Redis, and a NATS subscriber that records."""

from __future__ import annotations

import asyncio
import functools
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import orjson
import redis.asyncio as aioredis

from marketpipe.infra.local import NatsCluster, Process, RedisServer, _http_ok, free_port
from marketpipe.infra.simulator import SimulatorProcess


def service_env(
    sim: SimulatorProcess, cluster: NatsCluster, redis_server: RedisServer, **extra: str
) -> dict[str, str]:
    env = {
        "MARKETPIPE_NATS_URLS": ",".join(cluster.urls),
        "MARKETPIPE_REDIS_URL": redis_server.url,
        "MARKETPIPE_REDIS_PREFIX": f"mp{uuid.uuid4().hex[:8]}:",
        "MARKETPIPE_BINANCE_REST_URL": sim.rest_url,
        "MARKETPIPE_BINANCE_WS_URL": sim.ws_url,
        "MARKETPIPE_ASSETS_URL": sim.assets_url,
        "MARKETPIPE_ETCD_ENDPOINTS": "",
        "MARKETPIPE_STREAMS_PER_CONNECTION": "50",
        "MARKETPIPE_REST_WEIGHT_SHARE": "1.0",
    }
    env.update({f"MARKETPIPE_{k.upper()}": v for k, v in extra.items()})
    return env


def start_service(name: str, env: dict[str, str], logdir: Path, timeout: float = 30) -> Process:
    """``python -m marketpipe <name> --port N``, started once ``/readyz`` answers 200."""
    port = free_port()
    process = Process(
        name=name,
        argv=[sys.executable, "-m", "marketpipe", name, "--port", str(port)],
        healthy=functools.partial(_http_ok, f"http://127.0.0.1:{port}/readyz"),
        log_path=logdir / f"{name}.log",
        env=env,
    )
    process.start(timeout=timeout)
    process.port = port  # type: ignore[attr-defined]
    return process


def metric(process: Process, name: str, **labels: str) -> float:
    """One sample of the service's ``/metrics`` (0 when absent)."""
    port = process.port  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    head = f"{name}{{{want}}}" if want else name
    for line in text.splitlines():
        if line.startswith(head + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Recorder:
    """Every NATS message on ``subject`` (wildcards allowed), with its arrival time."""

    def __init__(self) -> None:
        self.messages: dict[str, list[bytes]] = defaultdict(list)
        self.arrivals: list[tuple[float, str, bytes]] = []
        self.last_at = time.monotonic()
        self._nc: Any = None

    @classmethod
    async def start(cls, urls: list[str], subject: str) -> Recorder:
        recorder = cls()
        recorder._nc = await nats.connect(servers=urls, pending_size=256 * 1024 * 1024)

        async def on_message(msg: Any) -> None:
            now = time.time()
            recorder.messages[msg.subject].append(msg.data)
            recorder.arrivals.append((now, msg.subject, msg.data))
            recorder.last_at = time.monotonic()

        await recorder._nc.subscribe(subject, cb=on_message, pending_msgs_limit=10_000_000)
        await recorder._nc.flush()
        return recorder

    def decoded(self, subject: str) -> list[dict[str, Any]]:
        return [orjson.loads(m) for m in self.messages.get(subject, [])]

    async def wait_quiet(self, seconds: float, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() - self.last_at < seconds:
            assert time.monotonic() < deadline, "NATS never went quiet"
            await asyncio.sleep(0.1)

    async def wait_for(self, check: Callable[[], bool], within: float = 30) -> None:
        deadline = time.monotonic() + within
        while not check():
            assert time.monotonic() < deadline, "condition not met in time"
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self._nc.close()


async def redis_client(url: str) -> aioredis.Redis:
    return aioredis.from_url(url)


async def blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Blocking helpers (simulator admin, process start) off the loop, so NATS keeps reading."""
    return await asyncio.to_thread(fn, *args, **kwargs)

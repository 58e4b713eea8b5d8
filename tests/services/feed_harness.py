"""End-to-end plumbing for the trades, tickers and markets tests: a service as a subprocess
pointed at the simulator, the NATS cluster and Redis, and a NATS subscriber that records."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
import redis.asyncio as aioredis

from marketpipe.infra.local import NatsCluster, Process, RedisServer
from marketpipe.infra.services import service_env, start_service
from marketpipe.infra.simulator import SimulatorProcess
from tests.eventually import eventually
from tests.exchange.support import connections


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
        """Until nothing has arrived for ``seconds``."""
        await eventually(lambda: time.monotonic() - self.last_at >= seconds, within, "NATS quiet")

    async def close(self) -> None:
        await self._nc.close()


@dataclass
class Stack:
    sim: SimulatorProcess
    recorder: Recorder
    service: Process
    redis: aioredis.Redis
    prefix: str  # the service's Redis key prefix


@contextlib.asynccontextmanager
async def feed_stack(
    name: str,
    subject: str,
    cluster: NatsCluster,
    redis_server: RedisServer,
    logdir: Path,
    *,
    symbols: int = 120,
    seed: int = 1,
    **settings: str,
) -> AsyncIterator[Stack]:
    """A simulator, a NATS recorder of ``subject`` and service ``name`` started in that order."""
    sim = SimulatorProcess(symbols=symbols, seed=seed, extra_args=["--levels", "200"])
    await blocking(sim.start)
    recorder = await Recorder.start(cluster.urls, subject)
    env = service_env(
        sim,
        cluster,
        redis_server,
        streams_per_connection="50",
        rest_weight_share="1.0",
        **settings,
    )
    service: Process | None = None
    cache = aioredis.from_url(redis_server.url)
    try:
        service = await blocking(start_service, name, env, logdir)
        yield Stack(sim, recorder, service, cache, env["MARKETPIPE_REDIS_PREFIX"])
    finally:
        await cache.aclose()
        await recorder.close()
        if service is not None:
            await blocking(service.stop)
        await blocking(sim.stop)


async def blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Blocking helpers (simulator admin, process start) off the loop, so NATS keeps reading."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def resubscribed(sim: SimulatorProcess, before: dict[int, set[str]]) -> bool:
    """Every stream of the connections ``before`` is subscribed again, on ones opened since."""
    fresh = [streams for id_, streams in (await connections(sim)).items() if id_ > max(before)]
    return set().union(*before.values()) <= set().union(*fresh)

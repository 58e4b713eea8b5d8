"""run_service end to end: a dummy service in a subprocess, real NATS, Redis and etcd."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from marketpipe.infra.local import EtcdServer, NatsCluster, RedisServer, free_port
from marketpipe.transport.nats import NatsClient
from tests.eventually import eventually

DUMMY = Path(__file__).with_name("dummy_service.py")


class Dummy:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    async def wait_ready(self) -> None:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False  # not listening yet

            await eventually(ready, within=20, what="/readyz")

    async def terminate(self) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            code = await self.proc.wait()
        return code, time.monotonic() - started


async def _start_dummy(name: str, env: dict[str, str]) -> Dummy:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(DUMMY), str(port), name, env={**os.environ, **env}
    )
    return Dummy(proc, port)


class Ticks:
    def __init__(self) -> None:
        self.ticks: list[dict[str, object]] = []
        self.byes: list[bytes] = []

    async def __call__(self, subject: str, data: bytes) -> None:
        if subject == "dummy.tick":
            self.ticks.append(orjson.loads(data))
        else:
            self.byes.append(data)

    async def wait_for(self, who: str | None = None) -> float:
        """Until a tick from ``who`` (None: anyone) arrives; returns when."""
        await eventually(
            lambda: self.ticks and who in (None, self.ticks[-1]["id"]), 15, f"a tick from {who}"
        )
        return time.monotonic()


@pytest.fixture
async def listener(nats_cluster: NatsCluster) -> AsyncIterator[Ticks]:
    client = NatsClient(nats_cluster.urls[1:])
    await client.connect()
    ticks = Ticks()
    await client.subscribe("dummy.>", ticks)
    await client.flush()
    yield ticks
    await client.drain()


def _env(nats: NatsCluster, redis: RedisServer, prefix: str, etcd: str = "") -> dict[str, str]:
    return {
        "MARKETPIPE_NATS_URLS": ",".join(nats.urls),
        "MARKETPIPE_REDIS_URL": redis.url,
        "MARKETPIPE_REDIS_PREFIX": prefix,
        "MARKETPIPE_ETCD_ENDPOINTS": etcd,
        "MARKETPIPE_LEADER_TTL_SECONDS": "2",
        "MARKETPIPE_LOG_LEVEL": "WARNING",
    }


async def test_sigterm_drains_and_exits_0_within_10s(
    nats_cluster: NatsCluster, redis_server: RedisServer, listener: Ticks
) -> None:
    dummy = await _start_dummy("solo", _env(nats_cluster, redis_server, "rt1:"))
    try:
        await dummy.wait_ready()
        await listener.wait_for("solo")
    finally:
        code, took = await dummy.terminate()
    assert code == 0
    assert took < 10
    await eventually(lambda: listener.byes)
    assert listener.byes == [b"solo"]  # published during stop(), delivered by the drain
    cache = aioredis.from_url(redis_server.url)
    last = await cache.get("rt1:dummy:last")
    await cache.aclose()
    assert last is not None and orjson.loads(last)["id"] == "solo"


async def test_only_the_leader_publishes_and_a_resign_hands_over_at_once(
    nats_cluster: NatsCluster, redis_server: RedisServer, etcd_server: EtcdServer, listener: Ticks
) -> None:
    env = _env(nats_cluster, redis_server, "rt2:", etcd_server.url)
    first = await _start_dummy("a", env)
    second = await _start_dummy("b", env)
    dummies = {"a": first, "b": second}
    try:
        await asyncio.gather(first.wait_ready(), second.wait_ready())
        await listener.wait_for()
        await asyncio.sleep(1.0)  # time for a follower to publish, were it to
        senders = {t["id"] for t in listener.ticks}
        assert len(senders) == 1, f"followers published: {senders}"
        leader = senders.pop()
        follower = "b" if leader == "a" else "a"
        old_epoch = int(listener.ticks[-1]["epoch"])  # type: ignore[call-overload]

        code, _ = await dummies[leader].terminate()
        stopped = time.monotonic()
        assert code == 0
        took_over = await listener.wait_for(follower)
        assert took_over - stopped < 1.5
        assert int(listener.ticks[-1]["epoch"]) > old_epoch  # type: ignore[call-overload]
    finally:
        for dummy in dummies.values():
            if dummy.proc.returncode is None:
                code, took = await dummy.terminate()
                assert code == 0 and took < 10

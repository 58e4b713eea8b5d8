"""End to end: simulator -> orderbook, trades, tickers, markets services -> gateway -> clients."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from marketpipe.infra.local import NatsCluster, Process, RedisServer
from marketpipe.infra.services import service_env, service_port, start_service
from marketpipe.infra.simulator import SimulatorProcess

pytestmark = pytest.mark.timeout(180)

PRODUCERS = ("orderbook", "trades", "tickers", "markets")


@pytest.fixture
def pipeline(
    exchange_sim: SimulatorProcess, nats_cluster: NatsCluster, redis_server: RedisServer
) -> Iterator[Process]:
    """The whole pipeline; yields the gateway process."""
    logdir = Path(tempfile.mkdtemp(prefix="mp-pipeline-"))
    env = service_env(exchange_sim, nats_cluster, redis_server)
    started: list[Process] = []
    try:
        for name in PRODUCERS:
            started.append(start_service(name, env, logdir, timeout=60))
        started.append(start_service("gateway", env, logdir))
        yield started[-1]
    finally:
        for process in reversed(started):
            process.stop()
        shutil.rmtree(logdir, ignore_errors=True)


async def collect(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[dict[str, Any]]:
    frames = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            break
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        frames.append(orjson.loads(msg.data))
    return frames


async def test_clients_get_every_channel_from_the_real_pipeline(pipeline: Process) -> None:
    url = f"http://127.0.0.1:{service_port(pipeline)}/ws"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        topics = "all@BTCUSDT,markets@SNAPSHOT,markets@DATA"
        await ws.send_str(orjson.dumps({"action": "subscribe", "topics": topics, "id": 1}).decode())
        frames = await collect(ws, 8.0)
        by_topic: dict[str, list[Any]] = defaultdict(list)
        for frame in frames[1:]:
            by_topic[frame["topic"]].append(frame["data"])
        assert frames[0] == {
            "result": "subscribed",
            "topics": ["all@BTCUSDT", "markets@SNAPSHOT", "markets@DATA"],
            "id": 1,
        }
        books = by_topic["orderbook@BTCUSDT"]
        assert len(books) >= 5
        versions = [(b["lastUpdateId"], b["epoch"], b["seq"]) for b in books]
        assert versions == sorted(set(versions)), "an older book followed a newer one"
        for book in books:
            bids = [float(p) for p, _ in book["bids"]]
            asks = [float(p) for p, _ in book["asks"]]
            assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
            assert bids[0] < asks[0]
        assert by_topic["trades@BTCUSDT"], "no live trades"
        assert all(t["s"] == "BTCUSDT" for t in by_topic["trades@BTCUSDT"])
        assert len(by_topic["snapshot_trades@BTCUSDT"]) == 1
        assert by_topic["tickers@BTCUSDT"]
        assert "BTCUSDT" in by_topic["markets@SNAPSHOT"][0]
        # a client arriving later gets the newest book at once
        async with http.ws_connect(url) as late:
            sent = time.monotonic()
            await late.send_str('{"action":"subscribe","topics":"orderbook@ETHUSDT"}')
            late_frames = await collect(late, 0.5)
            assert any(f.get("topic") == "orderbook@ETHUSDT" for f in late_frames)
            assert time.monotonic() - sent < 5

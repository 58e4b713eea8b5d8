"""The exchange client against the project's Binance-protocol simulator (real process, sockets)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator

import pytest

from marketpipe.exchange.rest import ExchangeRest
from marketpipe.exchange.snapshot_plan import SnapshotPlanner
from marketpipe.exchange.snapshots import SnapshotScheduler
from marketpipe.exchange.stream_plan import StreamPlan
from marketpipe.exchange.streams import StreamHub
from marketpipe.infra.simulator import SimulatorProcess

from .test_shells import Consumer, hub_runner, wait_for

__all__ = ["hub_runner"]
STREAM = "btcusdt@depth@100ms"


@pytest.fixture
def sim(exchange_sim: SimulatorProcess) -> Iterator[SimulatorProcess]:
    yield exchange_sim
    exchange_sim.clear_faults()


def hub_on(sim: SimulatorProcess, consumer: Consumer, plan: StreamPlan) -> StreamHub:
    hub = StreamHub(
        sim.ws_url,
        consumer.on_frame,
        on_streams_down=consumer.down.append,
        on_streams_up=consumer.up.append,
        plan=plan,
    )
    hub.set_streams([STREAM])
    return hub


async def test_rest_waits_out_retry_after(sim: SimulatorProcess) -> None:
    sim.fault(type="rest_error", status=429, retry_after=1, count=1, path="/api/v3/depth")
    async with ExchangeRest(sim.rest_url) as rest:
        started = time.monotonic()
        snapshot = await rest.depth("BTCUSDT", 100)
    assert time.monotonic() - started >= 0.99
    assert snapshot.bids and isinstance(snapshot.bids[0][0], str)


async def test_server_shutdown_swap_loses_no_diff(
    sim: SimulatorProcess, hub_runner: Callable[[StreamHub], None]
) -> None:
    consumer = Consumer()
    hub = hub_on(sim, consumer, StreamPlan(overlap_seconds=1.0))
    hub_runner(hub)
    await wait_for(lambda: len(consumer.deduped_ids(STREAM)) > 5)
    sim.fault(type="server_shutdown", symbol="BTCUSDT")
    await wait_for(lambda: hub.plan.slots[0].primary is not None
                   and hub.plan.slots[0].primary.link_id > 1
                   and hub.plan.slots[0].replacement is None)  # fmt: skip
    mark = consumer.last_u(STREAM)
    await wait_for(lambda: consumer.last_u(STREAM) > mark)
    applied, last = [], 0
    for frame in consumer.frames:
        if frame["stream"] == STREAM and frame["data"]["u"] > last:
            applied.append((frame["data"]["U"], frame["data"]["u"]))
            last = frame["data"]["u"]
    # Each applied diff starts at or before the previous end + 1: nothing skipped.
    assert all(u_first <= prev + 1 for (_, prev), (u_first, _) in itertools.pairwise(applied))
    assert consumer.down == []


@pytest.mark.parametrize("fault", [{"type": "close", "abrupt": True}, {"type": "silent"}])
async def test_lost_connection_is_reported_and_replaced(
    sim: SimulatorProcess, hub_runner: Callable[[StreamHub], None], fault: dict[str, object]
) -> None:
    consumer = Consumer()
    hub = hub_on(sim, consumer, StreamPlan(silent_seconds=1.0, backoff_cap_seconds=0.5))
    hub_runner(hub)
    await wait_for(lambda: consumer.last_u(STREAM) > 0)
    sim.fault(symbol="BTCUSDT", **fault)
    await wait_for(lambda: consumer.down == [frozenset({STREAM})])
    mark = consumer.last_u(STREAM)
    await wait_for(lambda: consumer.last_u(STREAM) > mark)
    assert len(consumer.up) == 2


async def test_scheduler_fetches_priority_first_and_reports_failures(sim: SimulatorProcess) -> None:
    got: list[tuple[str, int]] = []
    failed: list[str] = []
    async with ExchangeRest(sim.rest_url) as rest:
        planner = SnapshotPlanner(weight_per_minute=60_000, priority_limit=1000, other_limit=100)
        scheduler = SnapshotScheduler(
            rest,
            planner,
            lambda s, snap: got.append((s, len(snap.bids))),
            lambda s, _err: failed.append(s),
            max_in_flight=1,
        )
        scheduler.request("ETHUSDT")
        scheduler.request("NOPEUSDT")
        scheduler.request("BTCUSDT", priority=True)
        task = asyncio.create_task(scheduler.run())
        await wait_for(lambda: len(got) + len(failed) == 3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [s for s, _ in got] == ["BTCUSDT", "ETHUSDT"] and failed == ["NOPEUSDT"]
    assert dict(got)["ETHUSDT"] <= 100 < dict(got)["BTCUSDT"]

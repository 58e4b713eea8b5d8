"""The REST client and the snapshot scheduler against the simulator (real process, sockets).

The simulator logs every REST request it receives (``GET /admin/requests``), so the tests check
what went over the wire, not only what the client returned.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from marketpipe.exchange.rest import ExchangeError, ExchangeRest, ExchangeUnavailable
from marketpipe.exchange.snapshot_plan import SnapshotPlanner
from marketpipe.exchange.snapshots import SnapshotScheduler
from marketpipe.exchange.weights import WeightGate
from marketpipe.infra.simulator import SimulatorProcess
from tests.eventually import eventually
from tests.exchange.support import admin, rest_requests
from tests.metrics import sample


async def test_429_is_waited_out_for_retry_after_then_succeeds(
    exchange_sim: SimulatorProcess,
) -> None:
    exchange_sim.fault(type="rest_error", status=429, retry_after=1, count=1, path="/api/v3/depth")
    async with ExchangeRest(exchange_sim.rest_url) as rest:
        snapshot = await rest.depth("BTCUSDT", 100)
    assert snapshot.bids and isinstance(snapshot.bids[0][0], str)
    limited, retried = await rest_requests(exchange_sim)
    assert (limited["status"], retried["status"]) == (429, 200)
    assert retried["time"] - limited["time"] >= 0.99


async def test_418_ban_holds_every_request_of_the_process_until_retry_after(
    exchange_sim: SimulatorProcess,
) -> None:
    exchange_sim.fault(type="rest_error", status=418, retry_after=1, count=1, path="/api/v3/depth")
    async with ExchangeRest(exchange_sim.rest_url, max_attempts=1) as rest:
        with pytest.raises(ExchangeUnavailable):
            await rest.depth("BTCUSDT", 10)
        # Other endpoints and symbols, at once: none of them may go out during the ban.
        await asyncio.gather(
            rest.trades("BTCUSDT", 10), rest.depth("ETHUSDT", 5), rest.exchange_info()
        )
    banned, *after = await rest_requests(exchange_sim)
    assert banned["status"] == 418 and len(after) == 3
    assert all(r["status"] == 200 and r["time"] - banned["time"] >= 0.99 for r in after)


async def test_server_errors_are_retried_with_backoff(exchange_sim: SimulatorProcess) -> None:
    faults = [
        {"type": "rest_error", "status": status, "count": 1, "path": "/api/v3/depth"}
        for status in (503, 502, 500)
    ]
    await admin(exchange_sim, "POST", "faults", faults)
    async with ExchangeRest(exchange_sim.rest_url, backoff_cap_seconds=0.1) as rest:
        snapshot = await rest.depth("BTCUSDT", 5)
    assert len(snapshot.bids) == 5
    assert [r["status"] for r in await rest_requests(exchange_sim)] == [503, 502, 500, 200]


async def test_the_weight_spent_counts_every_request_sent_by_endpoint(
    exchange_sim: SimulatorProcess,
) -> None:
    def spent(endpoint: str) -> float:
        return sample("marketpipe_rest_weight_spent_total", endpoint=endpoint)

    before = spent("depth"), spent("exchangeInfo")
    fault = {"type": "rest_error", "status": 503, "count": 1, "path": "/api/v3/depth"}
    await admin(exchange_sim, "POST", "faults", [fault])
    async with ExchangeRest(exchange_sim.rest_url, backoff_cap_seconds=0.1) as rest:
        await rest.depth("BTCUSDT", 100)  # refused once, then served: 2 x 5
        await rest.depth("BTCUSDT", 5000)
        await rest.exchange_info()
    assert spent("depth") - before[0] == 5 + 5 + 250
    assert spent("exchangeInfo") - before[1] == 20


async def test_server_errors_give_up_after_max_attempts(exchange_sim: SimulatorProcess) -> None:
    exchange_sim.fault(type="rest_error", status=503, path="/api/v3/trades")
    async with ExchangeRest(exchange_sim.rest_url, max_attempts=3, backoff_cap_seconds=0.1) as rest:
        with pytest.raises(ExchangeUnavailable, match="HTTP 503"):
            await rest.trades("BTCUSDT")
    assert [r["status"] for r in await rest_requests(exchange_sim)] == [503] * 3


async def test_a_timeout_is_retried(exchange_sim: SimulatorProcess) -> None:
    exchange_sim.fault(type="slow_snapshot", symbol="BTCUSDT", seconds=2.0, count=1)
    async with ExchangeRest(
        exchange_sim.rest_url, timeout_seconds=0.5, backoff_cap_seconds=0.1
    ) as rest:
        started = time.monotonic()
        snapshot = await rest.depth("BTCUSDT", 5)
    assert len(snapshot.asks) == 5 and time.monotonic() - started >= 0.5


async def test_bad_symbol_is_an_exchange_error_and_not_retried(
    exchange_sim: SimulatorProcess,
) -> None:
    async with ExchangeRest(exchange_sim.rest_url) as rest:
        with pytest.raises(ExchangeError) as caught:
            await rest.depth("NOPEUSDT", 5)
    assert (caught.value.code, caught.value.status, caught.value.msg) == (
        -1121,
        400,
        "Invalid symbol.",
    )
    assert [r["status"] for r in await rest_requests(exchange_sim)] == [400]


@pytest.mark.parametrize("kind", ["not_json", "wrong_types"])
async def test_an_unreadable_reply_is_counted_and_raised_not_a_crash(
    exchange_sim: SimulatorProcess, kind: str
) -> None:
    before = sample("marketpipe_bad_input_total", source="rest", kind="depth")
    exchange_sim.fault(type="rest_malformed", kind=kind, count=1, path="/api/v3/depth")
    async with ExchangeRest(exchange_sim.rest_url) as rest:
        with pytest.raises(ExchangeUnavailable, match="unreadable reply"):
            await rest.depth("BTCUSDT", 5)
        assert sample("marketpipe_bad_input_total", source="rest", kind="depth") == before + 1
        assert len((await rest.depth("BTCUSDT", 5)).bids) == 5  # the client goes on


async def test_the_servers_used_weight_counts_what_others_spent(
    exchange_sim: SimulatorProcess,
) -> None:
    # Another process on the same IP spends 50 weight; ours, with a budget of 50, learns it from
    # X-MBX-USED-WEIGHT-1M and holds its next request until the server's minute is over.
    for _attempt in range(2):  # the server counts per clock minute: retry if one just began
        minute = int(time.time() // 60)
        async with ExchangeRest(exchange_sim.rest_url) as other:
            await other.exchange_info()
            await other.trades("BTCUSDT")
        gate = WeightGate(limit=100, share=0.5)
        async with ExchangeRest(exchange_sim.rest_url, gate=gate) as rest:
            await rest.depth("BTCUSDT", 5)
        if int(time.time() // 60) == minute:
            break
    assert sample("marketpipe_rest_weight_used") == 20 + 25 + 5
    assert gate.used(time.time()) == 5  # our own count alone would allow more...
    assert gate.try_acquire(5, time.time()) > 0  # ...the server's does not


async def test_scheduler_fetches_priority_first_and_reports_failures(
    exchange_sim: SimulatorProcess,
) -> None:
    got: list[tuple[str, int]] = []
    failed: list[str] = []
    started: list[str] = []
    async with ExchangeRest(exchange_sim.rest_url) as rest:
        planner = SnapshotPlanner(weight_per_minute=60_000)
        scheduler = SnapshotScheduler(
            rest,
            planner,
            lambda s, snap: got.append((s, len(snap.bids))),
            lambda s, _err: failed.append(s),
            on_fetch_started=started.append,
            max_in_flight=1,
        )
        scheduler.request("ETHUSDT", limit=100)
        scheduler.request("NOPEUSDT", limit=100)
        scheduler.request("BTCUSDT", limit=1000, priority=True)
        task = asyncio.create_task(scheduler.run())
        await eventually(lambda: len(got) + len(failed) == 3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [s for s, _ in got] == ["BTCUSDT", "ETHUSDT"] and failed == ["NOPEUSDT"]
    assert started == ["BTCUSDT", "ETHUSDT", "NOPEUSDT"]
    assert dict(got)["ETHUSDT"] <= 100 < dict(got)["BTCUSDT"]
    queries = [r["query"] for r in await rest_requests(exchange_sim, "/api/v3/depth")]
    assert queries == [
        "symbol=BTCUSDT&limit=1000",
        "symbol=ETHUSDT&limit=100",
        "symbol=NOPEUSDT&limit=100",
    ]


async def test_the_scheduler_stops_when_cancelled_right_after_a_request(
    exchange_sim: SimulatorProcess,
) -> None:
    got: list[str] = []
    async with ExchangeRest(exchange_sim.rest_url) as rest:
        planner = SnapshotPlanner(weight_per_minute=250)  # the second snapshot waits its turn
        scheduler = SnapshotScheduler(rest, planner, lambda s, _: got.append(s), lambda *_: None)
        task = asyncio.create_task(scheduler.run())
        scheduler.request("ETHUSDT", limit=5000)
        await eventually(lambda: got == ["ETHUSDT"])
        scheduler.request("BNBUSDT", limit=5000)
        await asyncio.sleep(0.05)  # the loop is waiting for BNBUSDT's turn (nothing to observe)
        # wakes the loop as the cancel arrives
        scheduler.request("BTCUSDT", limit=5000, priority=True)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the scheduler ignored the cancel"

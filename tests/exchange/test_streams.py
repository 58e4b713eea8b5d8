"""StreamHub against the simulator: real WebSocket connections, faults injected over its admin API.

The simulator numbers its connections 1, 2, ... in order of opening, so "one reconnect and the
old connection gone" reads ``{2: {...}}``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from marketpipe.exchange.stream_plan import StreamPlan
from marketpipe.exchange.streams import StreamHub
from marketpipe.infra.simulator import SimulatorProcess
from tests.eventually import eventually
from tests.exchange.support import Consumer, SimFactory, connections
from tests.metrics import sample

BTC, ETH, BNB, SOL = (f"{s}usdt@depth@100ms" for s in ("btc", "eth", "bnb", "sol"))
HubRunner = Callable[[StreamHub], None]


def start_hub(
    sim: SimulatorProcess, consumer: Consumer, plan: StreamPlan, run: HubRunner, streams: list[str]
) -> StreamHub:
    hub = StreamHub(
        sim.ws_url,
        consumer.on_frame,
        on_streams_down=consumer.down.append,
        on_streams_up=consumer.up.append,
        plan=plan,
    )
    hub.set_streams(streams)
    run(hub)
    return hub


async def more_diffs(consumer: Consumer, stream: str, count: int = 10) -> None:
    seen = len(consumer.applied(stream))
    await eventually(lambda: len(consumer.applied(stream)) >= seen + count)


def assert_contiguous(consumer: Consumer, stream: str) -> None:
    """Deduplicated by ``u``, each diff starts right after the previous one: nothing lost."""
    applied = consumer.applied(stream)
    assert len(applied) > 10
    assert all(u_first == prev + 1 for (_, prev), (u_first, _) in itertools.pairwise(applied))


async def test_streams_are_spread_over_connections_and_changed_live(
    exchange_sim: SimulatorProcess, hub_runner: HubRunner
) -> None:
    consumer = Consumer()
    hub = start_hub(
        exchange_sim, consumer, StreamPlan(per_connection=2), hub_runner, [BTC, ETH, BNB]
    )
    await eventually(lambda: all(consumer.last_u(s) > 0 for s in (BTC, ETH, BNB)))
    before = await connections(exchange_sim)
    assert sorted(map(len, before.values())) == [1, 2]
    assert set().union(*before.values()) == {BTC, ETH, BNB}
    (kept,) = (conn_id for conn_id, streams in before.items() if BTC in streams)
    hub.set_streams([BTC, SOL])
    await eventually(lambda: consumer.last_u(SOL) > 0)
    # SUBSCRIBE/UNSUBSCRIBE on the open connection, not a reconnect; the emptied one is closed.
    await eventually(lambda: connections_are(exchange_sim, {kept: {BTC, SOL}}))
    assert frozenset({SOL}) in consumer.up and consumer.down == []


async def connections_are(sim: SimulatorProcess, expected: dict[int, set[str]]) -> bool:
    return await connections(sim) == expected


async def test_many_live_subscriptions_are_paced_under_the_message_limit(
    exchange_sim: SimulatorProcess, hub_runner: HubRunner
) -> None:
    # 1000 more streams are 10 SUBSCRIBE messages; the simulator closes a connection that sends
    # more than 5 messages in a second. Well-formed streams of unknown symbols are acknowledged.
    consumer = Consumer()
    hub = start_hub(exchange_sim, consumer, StreamPlan(per_connection=1024), hub_runner, [BTC])
    await eventually(lambda: consumer.last_u(BTC) > 0)
    more = {f"zz{i}usdt@trade" for i in range(1000)}
    hub.add(more)
    await eventually(lambda: set().union(*consumer.up) == {BTC} | more)  # every reply seen
    assert await connections(exchange_sim) == {1: {BTC} | more} and consumer.down == []


async def test_a_rejected_control_message_is_counted_and_the_connection_kept(
    exchange_sim: SimulatorProcess, hub_runner: HubRunner
) -> None:
    def errors() -> float:
        return sample("marketpipe_bad_input_total", source="exchange_ws", kind="control_error")

    before = errors()
    consumer = Consumer()
    hub = start_hub(exchange_sim, consumer, StreamPlan(), hub_runner, [BTC])
    await eventually(lambda: consumer.last_u(BTC) > 0)
    hub.add(["btcusdt@nonsense"])  # the exchange answers {"error": {...}, "id": ...}
    await eventually(lambda: errors() == before + 1)
    await more_diffs(consumer, BTC)
    assert await connections(exchange_sim) == {1: {BTC}}
    assert consumer.down == [] and consumer.up == [frozenset({BTC})]
    assert_contiguous(consumer, BTC)


@pytest.mark.parametrize(
    "fault",
    [
        {"type": "close", "abrupt": True},  # a network drop: no close handshake
        {"type": "close", "code": 1011},
        {"type": "silent"},  # open but nothing more: not even pings
    ],
    ids=["abrupt", "close_frame", "silent"],
)
async def test_a_lost_connection_is_reported_and_replaced(
    exchange_sim: SimulatorProcess, hub_runner: HubRunner, fault: dict[str, object]
) -> None:
    consumer = Consumer()
    plan = StreamPlan(silent_seconds=1.0, backoff_cap_seconds=0.5)
    start_hub(exchange_sim, consumer, plan, hub_runner, [BTC])
    await eventually(lambda: consumer.last_u(BTC) > 0)
    exchange_sim.fault(symbol="BTCUSDT", **fault)
    await eventually(lambda: consumer.down == [frozenset({BTC})])
    mark = consumer.last_u(BTC)
    await eventually(lambda: consumer.last_u(BTC) > mark)
    await eventually(lambda: connections_are(exchange_sim, {2: {BTC}}))  # one reconnect, old gone
    assert consumer.up == [frozenset({BTC})] * 2


async def test_server_shutdown_is_replaced_make_before_break(
    exchange_sim: SimulatorProcess, hub_runner: HubRunner
) -> None:
    consumer = Consumer()
    start_hub(exchange_sim, consumer, StreamPlan(overlap_seconds=1.0), hub_runner, [BTC])
    await eventually(lambda: len(consumer.applied(BTC)) > 5)
    exchange_sim.fault(type="server_shutdown", symbol="BTCUSDT")
    await eventually(lambda: connections_are(exchange_sim, {2: {BTC}}))
    await more_diffs(consumer, BTC)
    assert_contiguous(consumer, BTC)
    assert consumer.down == [] and consumer.up == [frozenset({BTC})]


async def test_connections_are_replaced_make_before_break_before_the_servers_max_age(
    make_sim: SimFactory, hub_runner: HubRunner
) -> None:
    sim = make_sim("--max-age", "3")  # the exchange cuts connections after 3 s
    consumer = Consumer()
    plan = StreamPlan(max_age_seconds=1.5, overlap_seconds=0.5)
    start_hub(sim, consumer, plan, hub_runner, [BTC, ETH])
    await eventually(lambda: len(consumer.applied(BTC)) > 5)
    await eventually(lambda: connections_are(sim, {3: {BTC, ETH}}))  # two swaps, nothing left over
    await more_diffs(consumer, BTC)
    assert_contiguous(consumer, BTC)
    assert_contiguous(consumer, ETH)
    assert consumer.down == [] and consumer.up == [frozenset({BTC, ETH})]


async def test_server_pings_are_answered_and_keep_a_quiet_connection_alive(
    make_sim: SimFactory, hub_runner: HubRunner
) -> None:
    # Pings every 0.3 s, closed after 1.5 s without a pong. The stream of an unknown symbol sends
    # nothing, so only the pings show the connection is alive (silence limit 1.5 s).
    sim = make_sim("--ping-seconds", "0.3", "--pong-timeout", "1.5")
    consumer = Consumer()
    quiet = "nonexistusdt@depth@100ms"
    hub = start_hub(sim, consumer, StreamPlan(silent_seconds=1.5), hub_runner, [quiet])
    await eventually(lambda: consumer.up == [frozenset({quiet})])
    for _ in range(3):
        await eventually(lambda: hub.connected_links == 1)
        assert await connections(sim) == {1: {quiet}}
        await asyncio.sleep(1.0)  # quiet time passes, more than a ping interval
    assert consumer.down == [] and consumer.frames == []


async def test_the_hub_stops_when_cancelled_right_after_a_change(
    exchange_sim: SimulatorProcess,
) -> None:
    consumer = Consumer()
    hub = StreamHub(exchange_sim.ws_url, consumer.on_frame, on_streams_up=consumer.up.append)
    hub.set_streams([BTC])
    task = asyncio.create_task(hub.run())
    await eventually(lambda: consumer.up == [frozenset({BTC})])
    hub.add([ETH])  # wakes the hub up in the same loop turn as the cancel
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the hub ignored the cancel"
    await eventually(lambda: connections_are(exchange_sim, {}))  # and closed its connection

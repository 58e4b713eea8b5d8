"""The REST client and the StreamHub over real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from marketpipe.exchange.rest import ExchangeError, ExchangeRest, ExchangeUnavailable
from marketpipe.exchange.stream_plan import StreamPlan
from marketpipe.exchange.streams import StreamHub
from marketpipe.exchange.weights import WeightGate

from .fake_exchange import FakeExchange


@pytest.fixture
async def exchange() -> AsyncIterator[FakeExchange]:
    fake = await FakeExchange().start()
    yield fake
    await fake.stop()


async def wait_for(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_rest_respects_retry_after_then_succeeds(exchange: FakeExchange) -> None:
    body = {"code": -1003, "msg": "Too much request weight used"}
    exchange.rest_replies.append((429, {"Retry-After": "1"}, body))
    async with ExchangeRest(exchange.url) as rest:
        snapshot = await rest.depth("BTCUSDT", 5000)
    assert snapshot.last_update_id == 7 and snapshot.bids == [("1.0", "2.0")]
    (first, _), (second, _) = exchange.rest_log
    assert second - first >= 0.99


async def test_rest_ban_blocks_every_request_of_the_process(exchange: FakeExchange) -> None:
    exchange.rest_replies.append((418, {"Retry-After": "1"}, {"code": -1003, "msg": "banned"}))
    exchange.rest_replies.append((200, {}, []))
    async with ExchangeRest(exchange.url, max_attempts=1) as rest:
        with pytest.raises(ExchangeUnavailable):
            await rest.depth("BTCUSDT", 10)
        started = time.monotonic()
        await rest.trades("BTCUSDT")  # a different endpoint waits for the ban too
        assert time.monotonic() - started >= 0.9
    assert len(exchange.rest_log) == 2


async def test_rest_retries_server_errors_and_types_client_errors(exchange: FakeExchange) -> None:
    exchange.rest_replies += [(503, {}, {}), (502, {}, {})]
    exchange.rest_replies.append((400, {}, {"code": -1121, "msg": "Invalid symbol."}))
    async with ExchangeRest(exchange.url, backoff_cap_seconds=0.1) as rest:
        with pytest.raises(ExchangeError) as caught:
            await rest.depth("NOPE", 5)
    assert (caught.value.code, caught.value.status) == (-1121, 400)
    assert len(exchange.rest_log) == 3


async def test_rest_tracks_the_servers_used_weight(exchange: FakeExchange) -> None:
    depth = {"lastUpdateId": 1, "bids": [], "asks": []}
    exchange.rest_replies.append((200, {"X-MBX-USED-WEIGHT-1M": "2999"}, depth))
    gate = WeightGate(limit=6000, share=0.5)
    async with ExchangeRest(exchange.url, gate=gate) as rest:
        await rest.depth("BTCUSDT", 5)
    assert gate.try_acquire(5, time.time()) > 0  # the server says the budget is spent


async def test_rest_unreadable_reply_is_an_error_not_a_crash(exchange: FakeExchange) -> None:
    exchange.rest_replies.append((200, {}, {"lastUpdateId": "x"}))
    async with ExchangeRest(exchange.url) as rest:
        with pytest.raises(ExchangeUnavailable):
            await rest.depth("BTCUSDT", 5)


class Consumer:
    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.up: list[frozenset[str]] = []
        self.down: list[frozenset[str]] = []

    def on_frame(self, raw: bytes) -> None:
        self.frames.append(orjson.loads(raw))

    def last_u(self, stream: str) -> int:
        return max((f["data"]["u"] for f in self.frames if f["stream"] == stream), default=0)

    def deduped_ids(self, stream: str) -> list[int]:
        """What a consumer deduplicating by ``u`` applies, in arrival order."""
        applied, last = [], 0
        for frame in self.frames:
            if frame["stream"] == stream and frame["data"]["u"] > last:
                last = frame["data"]["u"]
                applied.append(last)
        return applied


async def run_hub(exchange: FakeExchange, consumer: Consumer, plan: StreamPlan) -> StreamHub:
    hub = StreamHub(
        exchange.url,
        consumer.on_frame,
        on_streams_down=consumer.down.append,
        on_streams_up=consumer.up.append,
        plan=plan,
    )
    return hub


@pytest.fixture
async def hub_runner() -> AsyncIterator[Callable[[StreamHub], None]]:
    tasks: list[asyncio.Task[None]] = []
    yield lambda hub: tasks.append(asyncio.create_task(hub.run()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_streams_spread_over_connections_and_live_changes(
    exchange: FakeExchange, hub_runner: Callable[[StreamHub], None]
) -> None:
    consumer = Consumer()
    hub = await run_hub(exchange, consumer, StreamPlan(per_connection=2))
    hub.set_streams(["a@depth@100ms", "b@depth@100ms", "c@depth@100ms"])
    hub_runner(hub)
    await wait_for(lambda: all(consumer.last_u(s) > 0 for s in hub.plan.streams))
    assert sorted(len(c.streams) for c in exchange.conns) == [1, 2]
    hub.set_streams(["a@depth@100ms", "d@depth@100ms"])
    await wait_for(lambda: consumer.last_u("d@depth@100ms") > 0)
    await wait_for(lambda: {s for c in exchange.conns for s in c.streams} == hub.plan.streams)
    assert frozenset({"d@depth@100ms"}) in consumer.up


async def test_reconnects_after_a_dropped_connection_and_reports_the_hole(
    exchange: FakeExchange, hub_runner: Callable[[StreamHub], None]
) -> None:
    consumer = Consumer()
    hub = await run_hub(exchange, consumer, StreamPlan(backoff_cap_seconds=0.5))
    hub.set_streams(["a@depth@100ms"])
    hub_runner(hub)
    await wait_for(lambda: consumer.last_u("a@depth@100ms") > 5)
    await exchange.kill_connections()
    await wait_for(lambda: consumer.down == [frozenset({"a@depth@100ms"})])
    before = consumer.last_u("a@depth@100ms")
    await wait_for(lambda: consumer.last_u("a@depth@100ms") > before + 5)
    assert exchange.connects == 2 and len(consumer.up) == 2


async def swap_without_loss(
    exchange: FakeExchange, consumer: Consumer, hub: StreamHub, trigger: Callable[[], object]
) -> None:
    stream = "a@depth@100ms"
    await wait_for(lambda: consumer.last_u(stream) > 5)
    result = trigger()
    if asyncio.iscoroutine(result):
        await result
    await wait_for(lambda: exchange.connects == 2 and len(exchange.conns) == 1)
    mark = consumer.last_u(stream)
    await wait_for(lambda: consumer.last_u(stream) > mark + 5)
    ids = consumer.deduped_ids(stream)
    assert ids == list(range(ids[0], ids[-1] + 1))  # U/u contiguous across the swap
    assert consumer.down == [] and len(consumer.up) == 1


async def test_server_shutdown_is_replaced_make_before_break(
    exchange: FakeExchange, hub_runner: Callable[[StreamHub], None]
) -> None:
    consumer = Consumer()
    hub = await run_hub(exchange, consumer, StreamPlan(overlap_seconds=0.5))
    hub.set_streams(["a@depth@100ms"])
    hub_runner(hub)
    await swap_without_loss(exchange, consumer, hub, exchange.send_server_shutdown)


async def test_old_connections_are_replaced_make_before_break(
    exchange: FakeExchange, hub_runner: Callable[[StreamHub], None]
) -> None:
    consumer = Consumer()
    hub = await run_hub(exchange, consumer, StreamPlan(max_age_seconds=1.5, overlap_seconds=0.5))
    hub.set_streams(["a@depth@100ms"])
    hub_runner(hub)
    await swap_without_loss(exchange, consumer, hub, lambda: None)


async def test_a_silent_connection_is_detected_and_replaced(
    exchange: FakeExchange, hub_runner: Callable[[StreamHub], None]
) -> None:
    consumer = Consumer()
    hub = await run_hub(exchange, consumer, StreamPlan(silent_seconds=0.5))
    hub.set_streams(["a@depth@100ms"])
    hub_runner(hub)
    await wait_for(lambda: consumer.last_u("a@depth@100ms") > 3)
    exchange.conns[0].silent = True
    await wait_for(lambda: consumer.down == [frozenset({"a@depth@100ms"})])
    before = consumer.last_u("a@depth@100ms")
    await wait_for(lambda: consumer.last_u("a@depth@100ms") > before)
    assert exchange.connects == 2

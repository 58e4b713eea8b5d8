"""The trades service: trade-id continuity (pure, hypothesis) and end to end (simulator)."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import orjson
from feed_harness import blocking, feed_stack, resubscribed
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.infra.local import NatsCluster, RedisServer
from marketpipe.infra.services import metric
from marketpipe.infra.simulator import SimulatorProcess
from marketpipe.services.trade_gaps import (
    MAX_TRADES_LIMIT,
    FetchMissing,
    FetchQueue,
    Step,
    TradeSequencer,
)
from tests.eventually import eventually
from tests.exchange.support import connections

# --- pure: TradeSequencer -------------------------------------------------------------------


class Exchange:
    """The truth for one pair: trade ids 1..made; REST serves the newest ``limit`` (minus a lag)."""

    def __init__(self) -> None:
        self.made = 0
        self.rest_lag = 0

    def rows(self, limit: int, lag: int) -> list[tuple[int, int]]:
        newest = self.made - lag
        return [(i, i) for i in range(max(1, newest - limit + 1), newest + 1)]


class Driver:
    def __init__(self) -> None:
        self.seq: TradeSequencer[int] = TradeSequencer("BTCUSDT")
        self.exchange = Exchange()
        self.published: list[int] = []
        self.pending: list[FetchMissing] = []
        self.up = True
        self.skipped = 0
        self.rejected = 0
        self.delivered = 0  # the newest id the stream has carried

    def apply(self, step: Step[int]) -> None:
        self.published.extend(step.publish)
        self.skipped += step.skipped
        self.rejected += step.rejected
        if step.fetch is not None and step.fetch.symbol not in {f.symbol for f in self.pending}:
            self.pending.append(step.fetch)

    def trade(self) -> None:
        self.exchange.made += 1
        if self.up:
            self.delivered = self.exchange.made
            self.apply(self.seq.on_live(self.exchange.made, self.exchange.made))

    def redeliver(self, back: int) -> None:
        # A stream repeats what it (or the connection it replaced) already carried; it never
        # carries, after a reconnect, a trade older than ones it did not carry.
        trade_id = self.delivered - back
        if self.up and trade_id >= 1:
            self.apply(self.seq.on_live(trade_id, trade_id))

    def down(self) -> None:
        if self.up:
            self.up = False
            self.seq.on_streams_down()

    def reconnect(self) -> None:
        if not self.up:
            self.up = True
            fetch = self.seq.on_streams_up()
            if fetch is not None:
                self.apply(Step(fetch=fetch))

    def fetch(self) -> None:
        if self.pending:
            # A lagging REST view is only detectable when held live trades prove it: a
            # reconnect check trusts what REST shows at that moment.
            lag = self.exchange.rest_lag if self.pending.pop(0).reason == "gap" else 0
            limit = self.seq.fetch_limit()
            self.apply(self.seq.on_fetched(self.exchange.rows(limit, lag), limit))

    def fail(self) -> None:
        if self.pending:
            self.pending.pop(0)
            self.apply(self.seq.on_fetch_failed())

    def drain(self) -> None:
        self.reconnect()
        self.exchange.rest_lag = 0
        for _ in range(50):
            if not self.pending:
                return
            self.fetch()


OP = st.one_of(
    st.just(("trade", 0)),
    st.just(("trade", 0)),
    st.just(("trade", 0)),
    st.tuples(st.just("redeliver"), st.integers(0, 5)),
    st.just(("down", 0)),
    st.just(("reconnect", 0)),
    st.just(("fetch", 0)),
    st.tuples(st.just("lag"), st.integers(0, 3)),
)
OPS = st.lists(OP, max_size=300)
OPS_WITH_FAILURES = st.lists(st.one_of(OP, st.just(("fail", 0))), max_size=300)


def run(driver: Driver, ops: list[tuple[str, int]]) -> None:
    for name, arg in ops:
        if name == "trade":
            driver.trade()
        elif name == "redeliver":
            driver.redeliver(arg)
        elif name == "down":
            driver.down()
        elif name == "reconnect":
            driver.reconnect()
        elif name == "fetch":
            driver.fetch()
        elif name == "fail":
            driver.fail()
        elif name == "lag":
            driver.exchange.rest_lag = arg


@settings(max_examples=400, deadline=None)
@given(OPS)
def test_every_trade_once_and_in_order(ops: list[tuple[str, int]]) -> None:
    driver = Driver()
    run(driver, ops)
    driver.drain()
    published = driver.published
    assert published == sorted(set(published)), "duplicates or disorder"
    assert driver.rejected == 0
    if published:
        # Fewer than 1000 trades, REST always answers: every trade from the first one is there.
        assert published == list(range(published[0], driver.exchange.made + 1))
        assert driver.skipped == 0


@settings(max_examples=300, deadline=None)
@given(OPS_WITH_FAILURES)
def test_failures_never_duplicate_or_reorder(ops: list[tuple[str, int]]) -> None:
    driver = Driver()
    run(driver, ops)
    driver.drain()
    published = driver.published
    assert published == sorted(set(published))
    assert set(published) <= set(range(1, driver.exchange.made + 1))
    assert driver.rejected == 0


@settings(max_examples=300, deadline=None)
@given(OPS_WITH_FAILURES)
def test_rest_failures_never_lose_a_trade_rest_still_serves(ops: list[tuple[str, int]]) -> None:
    """A fetch that got no answer proves nothing: the hole waits for an answer, however many
    fetches fail in a row (three REST errors used to give it up for good)."""
    driver = Driver()
    run(driver, ops)
    driver.drain()
    published = driver.published
    assert published == sorted(set(published))
    if published:
        assert published == list(range(published[0], driver.exchange.made + 1))
        assert driver.skipped == 0 and driver.rejected == 0


def test_many_failed_fetches_in_a_row_then_the_hole_fills() -> None:
    seq: TradeSequencer[int] = TradeSequencer("X")
    seq.on_live(1, 1)
    assert seq.on_live(5, 5).fetch == FetchMissing("X", "gap")
    for attempt in range(1, 11):
        step = seq.on_fetch_failed()
        assert step.skipped == 0 and step.publish == []
        assert step.fetch == FetchMissing("X", "gap", attempt)
    step = seq.on_fetched([(i, i) for i in range(1, 6)], seq.fetch_limit())
    assert step.publish == [2, 3, 4, 5] and step.skipped == 0


def test_hole_older_than_rest_serves_is_skipped_and_counted() -> None:
    driver = Driver()
    driver.trade()
    driver.down()
    for _ in range(MAX_TRADES_LIMIT + 500):
        driver.trade()
    driver.reconnect()
    driver.trade()
    driver.drain()
    made = driver.exchange.made
    assert driver.published == [1, *range(made - MAX_TRADES_LIMIT + 1, made + 1)]
    assert driver.skipped == made - MAX_TRADES_LIMIT - 1


def test_narrow_window_widens_before_giving_up() -> None:
    seq: TradeSequencer[int] = TradeSequencer("X")
    seq.on_live(1, 1)
    step = seq.on_live(400, 400)  # ids 2..399 missing; newest seen 400
    assert step.fetch == FetchMissing("X", "gap")
    limit = seq.fetch_limit()
    assert limit < MAX_TRADES_LIMIT
    # Meanwhile 800 trades happened: a window of `limit` does not reach back to id 2.
    rows = [(i, i) for i in range(1200 - limit + 1, 1201)]
    step = seq.on_fetched(rows, limit)
    assert step.publish == [] and step.fetch is not None
    assert seq.fetch_limit() == MAX_TRADES_LIMIT
    step = seq.on_fetched([(i, i) for i in range(201, 1201)], MAX_TRADES_LIMIT)
    assert step.publish == list(range(201, 1201))
    assert step.skipped == 199


def test_bogus_id_is_rejected_not_allowed_to_swallow_the_stream() -> None:
    seq: TradeSequencer[int] = TradeSequencer("X", max_attempts=2)
    for i in range(1, 11):
        seq.on_live(i, i)
    step = seq.on_live(10**12, -1)
    assert step.fetch is not None and step.publish == []
    held = seq.on_live(11, 11)  # held while the hole is being checked
    assert held.publish == []
    published: list[int] = []
    rejected = 0
    for _ in range(2):
        step = seq.on_fetched([(i, i) for i in range(1, 12)], seq.fetch_limit())
        published += step.publish
        rejected += step.rejected
    assert published == [11] and rejected == 1
    assert seq.on_live(12, 12).publish == [12]


def test_live_trade_after_reconnect_settles_the_check() -> None:
    seq: TradeSequencer[int] = TradeSequencer("X")
    seq.on_live(5, 5)
    seq.on_streams_down()
    assert seq.suspect
    assert seq.on_streams_up() == FetchMissing("X", "check")
    assert seq.on_live(6, 6).publish == [6]
    assert not seq.suspect  # the queued check can be skipped


def test_held_overflow_releases_in_order() -> None:
    seq: TradeSequencer[int] = TradeSequencer("X", max_held=3)
    seq.on_live(1, 1)
    seq.on_live(5, 5)
    seq.on_live(7, 7)
    seq.on_live(6, 6)
    step = seq.on_live(8, 8)
    assert step.publish == [5, 6, 7, 8] and step.skipped == 3
    assert not seq.filling


# --- pure: FetchQueue -----------------------------------------------------------------------


def test_fetch_queue_gap_first_one_per_pair() -> None:
    queue = FetchQueue()
    queue.add(FetchMissing("A", "check"))
    queue.add(FetchMissing("B", "gap"))
    queue.add(FetchMissing("B", "gap"))
    queue.add(FetchMissing("A", "gap"))  # upgrade
    queue.add(FetchMissing("C", "check"))
    assert len(queue) == 3
    first = queue.take()
    second = queue.take()
    assert first is not None and second is not None
    assert [first.symbol, second.symbol] == ["B", "A"]
    queue.add(FetchMissing("A", "gap"))  # A is in flight: waits until done
    third = queue.take()
    assert third is not None and third.symbol == "C"
    assert queue.take() is None
    queue.done("A")
    again = queue.take()
    assert again == FetchMissing("A", "gap")


@given(st.lists(st.tuples(st.sampled_from("ABCDE"), st.sampled_from(["gap", "check"]))))
def test_fetch_queue_never_runs_a_pair_twice_at_once(adds: list[tuple[str, str]]) -> None:
    queue = FetchQueue()
    for symbol, reason in adds:
        queue.add(FetchMissing(symbol, reason))
    running: set[str] = set()
    while (fetch := queue.take()) is not None:
        assert fetch.symbol not in running
        running.add(fetch.symbol)
    assert running == {s for s, _ in adds}


# --- end to end: simulator -> trades service (subprocess) -> NATS cluster + Redis ---------------


def _trade_fields(message: dict[str, Any]) -> tuple[Any, ...]:
    # `E` is the stream's send time: REST-recovered trades carry the trade time instead
    return tuple(message[k] for k in ("e", "s", "t", "p", "q", "T", "m", "sd"))


def _truth(sim: SimulatorProcess, symbol: str) -> list[dict[str, Any]]:
    rows = sim.admin("GET", "trades", symbol=symbol)
    return [{**r, "sd": "SELL" if r["m"] else "BUY"} for r in rows]


async def test_every_trade_once_in_order_across_a_disconnect(
    nats_cluster: NatsCluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with feed_stack(
        "trades", "trades.>", nats_cluster, redis_server, tmp_path, seed=7
    ) as stack:
        sim, recorder, service = stack.sim, stack.recorder, stack.service
        symbols = [s["symbol"] for s in await blocking(sim.admin, "GET", "symbols")]
        assert len(symbols) == 120
        await eventually(  # trades of every pair are flowing
            lambda: all(recorder.messages.get(f"trades.{s}") for s in symbols), within=30
        )
        before = await connections(sim)
        await blocking(sim.fault, type="close", abrupt=True)  # every stream connection drops
        await eventually(lambda: resubscribed(sim, before), within=30)
        # a malformed frame needs a connection to travel on: again until one has been counted
        schema = functools.partial(
            metric, service, "marketpipe_bad_input_total", source="exchange_ws", kind="schema"
        )

        async def counted() -> bool:
            if await blocking(schema) > 0:
                return True
            await blocking(sim.fault, type="malformed", kind="wrong_types")
            await asyncio.sleep(0.3)  # pacing the retries: one frame, given time to be counted
            return False

        await eventually(counted, what="a malformed frame counted")
        before = await connections(sim)
        await blocking(sim.fault, type="close", code=1011)
        await eventually(lambda: resubscribed(sim, before), within=30)
        arrived = len(recorder.arrivals)
        await eventually(lambda: len(recorder.arrivals) > arrived)  # live trades again
        await blocking(sim.pause)
        await recorder.wait_quiet(2.0)

        for symbol in symbols:
            truth = await blocking(_truth, sim, symbol)
            got = recorder.decoded(f"trades.{symbol}")
            assert got, f"no trades published for {symbol}"
            first = got[0]["t"]
            expected = [_trade_fields(m) for m in truth if m["t"] >= first]
            assert [_trade_fields(m) for m in got] == expected, symbol
            stored = await stack.redis.lrange(f"{stack.prefix}trades:{symbol}", 0, -1)
            cached = [orjson.loads(m) for m in stored]
            assert [_trade_fields(m) for m in cached] == expected[::-1][:10], symbol
        continuity = functools.partial(metric, service, "marketpipe_trade_continuity_total")
        assert continuity(event="gap") > 0 and continuity(event="recovered") > 0
        assert continuity(event="skipped") == 0 and continuity(event="rejected") == 0
        bad = metric(service, "marketpipe_bad_input_total", source="exchange_ws", kind="schema")
        assert bad > 0

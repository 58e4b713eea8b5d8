"""High availability of the real services, end to end (DESIGN §6, docs/operations.md).

Two replicas of ``orderbook`` (then ``trades``) run as subprocesses against the simulator, the
3-node NATS cluster, Redis and a fresh etcd (``LEADER_TTL_SECONDS=2``). A NATS recorder sees what
consumers see. Exactly one replica publishes; a kill -9 of the leader hands over within TTL + 1 s
with a higher ``epoch`` and ``seq`` restarting at 1, from hot books (no snapshot asked for); a
SIGTERM hands over at once; a leader cut off from etcd stops publishing at its lease deadline; and
at no moment do two epochs interleave on a subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from conftest import HA_SETTINGS, HA_SYMBOLS
from feed_harness import Recorder, blocking
from hypothesis import given
from hypothesis import strategies as st
from test_orderbook_e2e import view_of

from marketpipe.infra.local import EtcdServer, NatsCluster, Process, RedisServer
from marketpipe.infra.services import metric, service_env, start_service
from marketpipe.infra.simulator import SimulatorProcess
from marketpipe.services.trade_gaps import Step, TradeSequencer
from tests.eventually import eventually

SYMBOLS = HA_SYMBOLS
TTL = 2
RESYNC_REASONS = ("gap", "buffer_full", "disconnect", "bad_update", "bad_level", "crossed")
SETTINGS: dict[str, dict[str, Any]] = HA_SETTINGS


@dataclass
class Replica:
    name: str
    process: Process

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.process, name, **labels)

    def resyncs(self) -> float:
        return sum(self.metric("marketpipe_book_resyncs_total", reason=r) for r in RESYNC_REASONS)

    @property
    def leading(self) -> bool:
        return self.metric("marketpipe_is_leader") == 1

    @property
    def epoch(self) -> int:
        return int(self.metric("marketpipe_leader_epoch"))


@dataclass
class Pair:
    """Two replicas of one service and a recorder of everything they publish."""

    sim: SimulatorProcess
    etcd: EtcdServer
    recorder: Recorder
    prefix: str  # the services' NATS subject prefix
    replicas: dict[str, Replica]
    redis: aioredis.Redis
    redis_prefix: str

    async def leader(self, within: float = 15) -> tuple[Replica, Replica]:
        """(leader, follower) once exactly one replica says it leads."""

        async def one_leads() -> tuple[Replica, Replica] | None:
            live = [r for r in self.replicas.values() if r.process.running]
            leading = [r for r in live if await blocking(lambda r=r: r.leading)]
            assert len(leading) < 2, "two replicas lead at once"
            if not leading:
                return None
            return leading[0], next(r for r in live if r is not leading[0])

        return await eventually(one_leads, within, "one leader elected")

    def messages(self, channel: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        """(arrival wall time, message) on ``<channel>.*``, in arrival order."""
        head = f"{self.prefix}{channel}."
        return [
            (at, orjson.loads(data))
            for at, subject, data in list(self.recorder.arrivals)
            if at >= since and subject.startswith(head)
        ]

    def depth_requests(self, since: float) -> int:
        requests = self.sim.admin("GET", "requests")
        return sum(1 for r in requests if r["path"] == "/api/v3/depth" and r["time"] >= since)


@contextlib.asynccontextmanager
async def replicas(
    service: str,
    sim: SimulatorProcess,
    cluster: NatsCluster,
    redis_server: RedisServer,
    etcd: EtcdServer,
    logdir: Path,
    *,
    ttl: int = TTL,
    overrides: dict[str, dict[str, str]] | None = None,
    leader_first: str | None = None,
) -> AsyncIterator[Pair]:
    """Replicas ``a`` and ``b`` (``overrides``: settings of one of them, e.g. its own URLs);
    with ``leader_first``, that one starts alone and leads before the other starts."""
    prefix = f"f{uuid.uuid4().hex[:8]}."
    channel = "orderbook" if service == "orderbook" else service
    recorder = await Recorder.start(cluster.urls, f"{prefix}{channel}.*")
    env = service_env(
        sim,
        cluster,
        redis_server,
        etcd_endpoints=etcd.url,
        leader_ttl_seconds=str(ttl),
        subject_prefix=prefix,
        settings_url=sim.settings_url,
        rest_weight_limit="200000",
        rest_weight_share="1.0",
        snapshot_limit="1000",
        snapshot_limit_others="1000",
    )
    started: dict[str, Replica] = {}
    cache = aioredis.from_url(redis_server.url)

    async def start(name: str) -> None:
        (logdir / name).mkdir()
        own = {f"MARKETPIPE_{k.upper()}": v for k, v in (overrides or {}).get(name, {}).items()}
        process = await blocking(start_service, service, {**env, **own}, logdir / name)
        started[name] = Replica(name, process)

    try:
        pair = Pair(sim, etcd, recorder, prefix, started, cache, env["MARKETPIPE_REDIS_PREFIX"])
        if leader_first is None:
            await asyncio.gather(start("a"), start("b"))
        else:
            await start(leader_first)
            first = started[leader_first]
            await eventually(lambda: blocking(lambda: first.leading), 15, f"{leader_first} leads")
            await start("b" if leader_first == "a" else "a")
        yield pair
    finally:
        await recorder.close()
        await cache.aclose()
        for replica in started.values():
            await blocking(replica.process.stop)


@pytest.fixture
async def pair(
    request: pytest.FixtureRequest,
    ha_sim: SimulatorProcess,
    nats_cluster: NatsCluster,
    redis_server: RedisServer,
    fresh_etcd: EtcdServer,
    tmp_path: Path,
) -> AsyncIterator[Pair]:
    """Two replicas of ``orderbook`` (or the service the test names with ``indirect``)."""
    service = getattr(request, "param", "orderbook")
    async with replicas(service, ha_sim, nats_cluster, redis_server, fresh_etcd, tmp_path) as pair:
        yield pair


def assert_one_epoch_at_a_time(messages: list[tuple[float, dict[str, Any]]]) -> None:
    """Epochs never go back (no split brain) and, within an epoch, seq has no hole or repeat."""
    newest = 0
    last_seq: dict[tuple[str, int], int] = {}
    for _, message in messages:
        epoch, symbol = message["epoch"], message["symbol"]
        assert epoch >= newest, f"epoch {epoch} after {newest}: two publishers interleave"
        newest = epoch
        key = (symbol, epoch)
        assert message["seq"] == last_seq.get(key, 0) + 1, (symbol, epoch, message["seq"])
        last_seq[key] = message["seq"]


async def wait_for_epoch_above(pair: Pair, epoch: int, within: float) -> float:
    """Arrival time of the first book with an epoch above ``epoch``."""

    def newer() -> float | None:
        return next((at for at, m in pair.messages("orderbook") if m["epoch"] > epoch), None)

    return await eventually(newer, within, f"a book with an epoch above {epoch}")


async def steady_leader(pair: Pair) -> tuple[Replica, Replica, int]:
    """Every pair published by exactly one replica, from one epoch."""
    leader, follower = await pair.leader()
    await eventually(
        lambda: len({m["symbol"] for _, m in pair.messages("orderbook")}) == SYMBOLS, within=30
    )
    await asyncio.sleep(0.5)  # time for the follower to publish, were it to
    epochs = {m["epoch"] for _, m in pair.messages("orderbook")}
    assert epochs == {leader.epoch}, epochs
    assert not await blocking(lambda: follower.leading)
    return leader, follower, leader.epoch


async def assert_books_true(pair: Pair, epoch: int) -> None:
    """Market clock stopped: each pair's last book (from ``epoch``) is the simulator's book."""
    await blocking(pair.sim.pause)
    try:
        await pair.recorder.wait_quiet(0.6)
        last: dict[str, dict[str, Any]] = {}
        for _, message in pair.messages("orderbook"):
            last[message["symbol"]] = message
        assert len(last) == SYMBOLS
        for symbol, message in last.items():
            assert message["epoch"] == epoch, symbol
            truth = await blocking(pair.sim.book, symbol)
            assert message["lastUpdateId"] == truth["lastUpdateId"], symbol
            bids, asks = view_of(SETTINGS, symbol, truth["bids"], truth["asks"])
            assert (message["bids"], message["asks"]) == (bids, asks), symbol
    finally:
        await blocking(pair.sim.resume)


async def test_orderbook_kill_9_follower_publishes_within_ttl_from_hot_books(pair: Pair) -> None:
    leader, follower, old_epoch = await steady_leader(pair)
    resyncs = follower.resyncs()

    killed = time.time()
    await blocking(leader.process.kill)
    first = await wait_for_epoch_above(pair, old_epoch, within=TTL + 3)
    assert first - killed <= TTL + 1, f"took over after {first - killed:.2f}s"
    assert await blocking(lambda: follower.leading)
    new_epoch = follower.epoch
    assert new_epoch > old_epoch

    # hot books: every pair goes out at once, seq from 1, and no snapshot was asked for
    await eventually(
        lambda: len({m["symbol"] for _, m in pair.messages("orderbook", first)}) == SYMBOLS,
        within=2,
    )
    firsts: dict[str, tuple[float, dict[str, Any]]] = {}
    for at, message in pair.messages("orderbook", first):
        firsts.setdefault(message["symbol"], (at, message))
    assert len(firsts) == SYMBOLS
    assert all(m["seq"] == 1 and m["epoch"] == new_epoch for _, m in firsts.values())
    assert max(at for at, _ in firsts.values()) - first < 0.5
    assert await blocking(pair.depth_requests, killed) == 0
    assert follower.resyncs() == resyncs

    await asyncio.sleep(0.5)  # time for the old leader's books to interleave, were there any
    assert_one_epoch_at_a_time(pair.messages("orderbook"))
    await assert_books_true(pair, new_epoch)


async def test_orderbook_sigterm_exits_0_and_hands_over_at_once(pair: Pair) -> None:
    leader, follower, old_epoch = await steady_leader(pair)
    proc = leader.process.proc
    assert proc is not None

    signalled = time.time()
    proc.terminate()
    code = await blocking(proc.wait, 10)
    exited = time.time()
    assert code == 0
    assert exited - signalled < 10
    first = await wait_for_epoch_above(pair, old_epoch, within=TTL)
    assert first - exited < 0.5 * TTL, f"took over {first - exited:.2f}s after the exit"
    assert await blocking(lambda: follower.leading)
    assert (
        follower.metric("marketpipe_leader_transitions_total", role="follower", reason="lease_lost")
        == 0
    )

    await asyncio.sleep(0.5)  # time for the old leader's books to interleave, were there any
    assert_one_epoch_at_a_time(pair.messages("orderbook"))
    seqs = {m["symbol"]: m["seq"] for _, m in pair.messages("orderbook", first)[::-1]}
    assert len(seqs) == SYMBOLS and set(seqs.values()) == {1}


async def test_orderbook_leader_cut_off_from_etcd_stops_at_its_lease_deadline(pair: Pair) -> None:
    leader, follower, old_epoch = await steady_leader(pair)

    paused = time.time()
    assert pair.etcd.process is not None
    pair.etcd.process.pause()
    try:
        await asyncio.sleep(TTL + 1.5)  # the lease runs out meanwhile, etcd or not
        # the lease deadline came before etcd could expire the lease: nobody publishes
        assert not await blocking(lambda: leader.leading)
        assert not await blocking(lambda: follower.leading)
        during = pair.messages("orderbook", paused)
        assert {m["epoch"] for _, m in during} <= {old_epoch}
        last = max((at for at, _ in during), default=paused)
        assert last <= paused + TTL + 0.2, f"published {last - paused:.2f}s into the pause"
        assert pair.messages("orderbook", paused + TTL + 0.2) == []
    finally:
        resumed = time.time()
        pair.etcd.process.resume()

    first = await wait_for_epoch_above(pair, old_epoch, within=3 * TTL + 2)
    await asyncio.sleep(1.0)  # time for a second leader to publish, were there one
    after = pair.messages("orderbook", resumed)
    assert len({m["epoch"] for _, m in after}) == 1, "more than one leader after the resume"
    new_leader, _ = await pair.leader()
    assert new_leader.epoch == after[-1][1]["epoch"] > old_epoch
    assert_one_epoch_at_a_time(pair.messages("orderbook"))
    assert {m["symbol"] for _, m in pair.messages("orderbook", first)} == {
        m["symbol"] for _, m in pair.messages("orderbook")
    }


def trade_fields(message: dict[str, Any]) -> tuple[Any, ...]:
    # `E` is the stream's send time: REST-recovered trades carry the trade time instead
    return tuple(message[k] for k in ("s", "t", "p", "q", "T", "m", "sd"))


@pytest.mark.parametrize("pair", ["trades"], indirect=True)
async def test_trades_kill_9_no_hole_no_duplicate(pair: Pair) -> None:
    leader, follower = await pair.leader()
    await eventually(lambda: len(pair.messages("trades")) > 50, within=30)

    await blocking(leader.process.kill)
    await trades_go_on_after_takeover(follower, pair, within=TTL + 1)
    await assert_trades_complete(pair)


async def trades_go_on_after_takeover(follower: Replica, pair: Pair, within: float) -> None:
    """``follower`` leads within ``within`` s, and then publishes trades."""
    await eventually(lambda: blocking(lambda: follower.leading), within, "the follower took over")
    took_over = time.time()
    await eventually(lambda: len(pair.messages("trades", took_over)) > 50, within=30)


async def assert_trades_complete(pair: Pair) -> None:
    """Market clock stopped: every pair's trades since its first on NATS, each exactly once, in
    order, equal to the exchange's; Redis holds the last 10 of them."""
    await blocking(pair.sim.pause)
    try:
        await pair.recorder.wait_quiet(0.6)
        by_symbol: dict[str, list[dict[str, Any]]] = {}
        for _, message in pair.messages("trades"):
            by_symbol.setdefault(message["s"], []).append(message)
        for symbol, got in by_symbol.items():
            rows = await blocking(pair.sim.admin, "GET", "trades", symbol=symbol)
            truth = [{**r, "sd": "SELL" if r["m"] else "BUY"} for r in rows]
            first = got[0]["t"]
            want = [trade_fields(m) for m in truth if m["t"] >= first]
            ids = [m["t"] for m in got]
            assert len(ids) == len(set(ids)), f"{symbol}: duplicate trade ids"
            assert [trade_fields(m) for m in got] == want, f"{symbol}: trades lost"
            cached = await pair.redis.lrange(f"{pair.redis_prefix}trades:{symbol}", 0, -1)
            assert [trade_fields(orjson.loads(m)) for m in cached] == want[::-1][:10], symbol
    finally:
        await blocking(pair.sim.resume)


# --- the trades catch-up on its own (pure): TradeSequencer.resume_after ---------------------------


def _drain(seq: TradeSequencer[int], step: Step[int], history: int) -> list[int]:
    """What ``step`` and the REST fetches it leads to publish; REST serves ids 1..history."""
    out = list(step.publish)
    while step.fetch is not None:
        limit = seq.fetch_limit()
        rows = [(t, t) for t in range(max(1, history - limit + 1), history + 1)]
        step = seq.on_fetched(rows, limit)
        out += step.publish
    return out


@given(
    released=st.integers(1, 60),
    published=st.integers(0, 70),
    kept=st.integers(0, 60),
    later=st.integers(0, 5),
)
def test_resume_after_continues_exactly_after_the_previous_publisher(
    released: int, published: int, kept: int, later: int
) -> None:
    """This replica released ids 1..released and kept the last ``kept`` of them; the previous
    leader published 1..published (it may have been ahead). Consumers end up with every id once."""
    seq: TradeSequencer[int] = TradeSequencer("BTCUSDT")
    for trade_id in range(1, released + 1):
        assert seq.on_live(trade_id, trade_id).publish == [trade_id]
    recent = [(t, t) for t in range(released - min(kept, released) + 1, released + 1)]
    history = max(released, published) + later

    out = _drain(seq, seq.resume_after(published, recent), history)
    for trade_id in range(released + 1, history + 1):
        out += _drain(seq, seq.on_live(trade_id, trade_id), history)
    assert list(range(1, published + 1)) + out == list(range(1, history + 1))


def test_resume_after_nothing_published_sends_everything_kept() -> None:
    seq: TradeSequencer[int] = TradeSequencer("BTCUSDT")
    for trade_id in (5, 6, 7):
        seq.on_live(trade_id, trade_id)
    step = seq.resume_after(None, [(6, 6), (7, 7)])
    assert step.publish == [6, 7] and step.fetch is None
    assert seq.on_live(8, 8).publish == [8]

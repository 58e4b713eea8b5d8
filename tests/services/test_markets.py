"""The markets service: the pure whole-market model, and end to end against the simulator."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import msgspec
import orjson
from feed_harness import Recorder, blocking, feed_stack
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.exchange.messages import Ticker
from marketpipe.infra.local import NatsCluster, RedisServer
from marketpipe.infra.services import metric
from marketpipe.services.feed_messages import tickers_from_rest
from marketpipe.services.markets_model import MarketsModel
from tests.eventually import eventually


def make_ticker(symbol: str, price: str, event_time: int = 1000) -> Ticker:
    return Ticker(
        E=event_time, s=symbol, p="0", P="0", w=price, c=price, Q="1", b=price, B="1", a=price,
        A="1", o=price, h=price, l=price, v="1", q="1", O=0, C=event_time, F=1, L=2, n=2, x=price,
    )  # fmt: skip


def test_rest_ticker_rows_become_stream_tickers() -> None:
    row = {
        "symbol": "BTCUSDT", "priceChange": "-512.30000000", "priceChangePercent": "-0.830",
        "weightedAvgPrice": "61544.12000000", "prevClosePrice": "61746.31000000",
        "lastPrice": "61234.01000000", "lastQty": "0.00120000", "bidPrice": "61234.01000000",
        "bidQty": "0.51200000", "askPrice": "61234.02000000", "askQty": "0.00300000",
        "openPrice": "61746.31000000", "highPrice": "62100.00000000",
        "lowPrice": "60800.00000000", "volume": "15234.11000000",
        "quoteVolume": "937599345.12000000", "openTime": 1765345700000,
        "closeTime": 1765432100000, "firstId": 3990000000, "lastId": 3991234567,
        "count": 1234568,
    }  # fmt: skip
    tickers, bad = tickers_from_rest([row, {"symbol": "ETHUSDT", "lastPrice": 3}])
    assert bad == 1
    (ticker,) = tickers
    message = orjson.loads(msgspec.json.encode(ticker))
    assert message["e"] == "24hrTicker" and message["s"] == "BTCUSDT"
    assert message["E"] == message["C"] == 1765432100000
    assert (message["c"], message["b"], message["a"]) == (
        "61234.01000000",
        "61234.01000000",
        "61234.02000000",
    )
    assert (message["F"], message["L"], message["n"]) == (3990000000, 3991234567, 1234568)
    assert message["x"] == "61746.31000000"


def test_tick_reports_only_changed_or_new_pairs() -> None:
    model = MarketsModel()
    assert model.tick().snapshot is None
    model.apply(make_ticker("BTCUSDT", "1.0"))
    model.apply(make_ticker("ETHUSDT", "2.0"))
    first = model.tick()
    assert set(first.changed) == {"BTCUSDT", "ETHUSDT"}
    assert first.snapshot is not None and set(orjson.loads(first.snapshot)) == {
        "BTCUSDT",
        "ETHUSDT",
    }
    assert model.tick().data is None  # nothing changed
    model.apply(make_ticker("BTCUSDT", "1.0", 2000))  # new event, same price: not a change
    model.apply(make_ticker("ETHUSDT", "2.5", 2000))
    model.apply(make_ticker("BNBUSDT", "3.0", 2000))
    tick = model.tick()
    assert tick.data is not None
    data = orjson.loads(tick.data)
    assert set(data) == {"ETHUSDT", "BNBUSDT"}
    assert data["ETHUSDT"]["c"] == "2.5"
    assert tick.snapshot is not None and len(orjson.loads(tick.snapshot)) == 3


def test_older_ticker_is_ignored() -> None:
    model = MarketsModel()
    assert model.apply(make_ticker("BTCUSDT", "2.0", 2000)) is not None
    assert model.apply(make_ticker("BTCUSDT", "1.0", 1000)) is None
    snapshot = model.tick().snapshot
    assert snapshot is not None and orjson.loads(snapshot)["BTCUSDT"]["c"] == "2.0"


def test_universe_drops_delisted_and_rejects_strangers() -> None:
    model = MarketsModel()
    model.apply(make_ticker("BTCUSDT", "1.0"))
    model.apply(make_ticker("OLDUSDT", "1.0"))
    model.tick()
    assert model.set_universe({"BTCUSDT", "NEWUSDT"}) == ["OLDUSDT"]
    assert model.missing() == ["NEWUSDT"]
    assert model.apply(make_ticker("OLDUSDT", "5.0", 5000)) is None
    model.apply(make_ticker("NEWUSDT", "1.0"))
    tick = model.tick()
    assert tick.changed == ("NEWUSDT",)
    assert tick.snapshot is not None and set(orjson.loads(tick.snapshot)) == {
        "BTCUSDT",
        "NEWUSDT",
    }


SYMBOLS = st.sampled_from(["AUSDT", "BUSDT", "CUSDT", "DUSDT"])
PRICES = st.sampled_from(["1.0", "1.5", "2.0"])


@given(st.lists(st.lists(st.tuples(SYMBOLS, PRICES), max_size=8), max_size=12))
def test_data_carries_exactly_the_changed_pairs(rounds: list[list[tuple[str, str]]]) -> None:
    model = MarketsModel()
    seen: dict[str, str] = {}
    event_time = 0
    for updates in rounds:
        before = dict(seen)
        for symbol, price in updates:
            event_time += 1
            model.apply(make_ticker(symbol, price, event_time))
            seen[symbol] = price
        tick = model.tick()
        expected = {s: p for s, p in seen.items() if before.get(s) != p}
        data = orjson.loads(tick.data) if tick.data else {}
        assert {s: m["c"] for s, m in data.items()} == expected
        snapshot = orjson.loads(tick.snapshot) if tick.snapshot else {}
        assert {s: m["c"] for s, m in snapshot.items()} == seen


# --- end to end: simulator -> markets service (subprocess) -> NATS cluster + Redis --------------

TIME_KEYS = {"E", "O", "C"}


def _stats(ticker: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ticker.items() if k not in TIME_KEYS}


def _ticks(recorder: Recorder) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(SNAPSHOT, DATA of the same tick or None), in arrival order."""
    ticks: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    for _at, subject, data in recorder.arrivals:
        if subject == "markets.SNAPSHOT":
            ticks.append((orjson.loads(data), None))
        elif subject == "markets.DATA":
            assert ticks and ticks[-1][1] is None, "DATA without its SNAPSHOT"
            ticks[-1] = (ticks[-1][0], orjson.loads(data))
    return ticks


async def test_markets_snapshot_data_listing_and_delisting(
    nats_cluster: NatsCluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with feed_stack(
        "markets",
        "markets.*",
        nats_cluster,
        redis_server,
        tmp_path,
        seed=5,
        assets_poll_seconds="1",
    ) as stack:
        sim, recorder, service, cache = stack.sim, stack.recorder, stack.service, stack.redis
        hash_key = stack.prefix + "markets"
        symbols = {s["symbol"] for s in await blocking(sim.admin, "GET", "symbols")}
        assert len(symbols) == 120
        await eventually(lambda: len(_ticks(recorder)) >= 4, within=30)

        # DATA carries exactly the pairs whose last price changed since the previous tick
        ticks = _ticks(recorder)[:-1]  # the last one's DATA may be on its way
        assert len(ticks) >= 3
        assert set(ticks[0][0]) == symbols  # the REST snapshot had every pair from the start
        for (before, _), (after, data) in itertools.pairwise(ticks):
            changed = {s for s, t in after.items() if s not in before or before[s]["c"] != t["c"]}
            assert set(data or {}) == changed
            assert all(data[s] == after[s] for s in changed) if data else True

        # quiescence: the snapshot and the Redis hash equal the simulator's statistics
        await blocking(sim.pause)
        truth = {s: _stats(await blocking(sim.admin, "GET", "ticker", symbol=s)) for s in symbols}

        def apart() -> list[str]:
            last = _ticks(recorder)[-1][0]
            return [s for s in symbols if s not in last or _stats(last[s]) != truth[s]]

        # the ticker streams' last statistics (sent each second) reach the snapshot
        await eventually(lambda: not apart(), within=15, what=lambda: f"apart: {apart()[:5]}")
        mark = len(recorder.arrivals)
        await asyncio.sleep(2.2)  # time passes with the market paused: snapshots go on, no DATA
        quiet = [s for _at, s, _d in recorder.arrivals[mark:]]
        assert "markets.DATA" not in quiet and quiet.count("markets.SNAPSHOT") >= 2
        snapshot = _ticks(recorder)[-1][0]
        stored = {k.decode(): orjson.loads(v) for k, v in (await cache.hgetall(hash_key)).items()}
        assert set(snapshot) == set(stored) == symbols
        for symbol in symbols:
            assert _stats(snapshot[symbol]) == truth[symbol], symbol
            assert _stats(stored[symbol]) == truth[symbol]  # the hash may be a tick newer

        # a listing joins and a halted pair leaves, without a restart
        gone = sorted(symbols)[0]
        await blocking(sim.admin, "POST", "symbols", {"symbol": "NEWUSDT", "price": "2.00000000"})
        await blocking(sim.admin, "POST", "symbols/status", {"symbol": gone, "status": "HALT"})

        def switched() -> bool:
            last = _ticks(recorder)[-1][0]
            return "NEWUSDT" in last and gone not in last

        await eventually(switched, within=15)
        await eventually(  # the DATA of the tick it joined in, close behind that SNAPSHOT
            lambda: any("NEWUSDT" in (data or {}) for _snapshot, data in _ticks(recorder))
        )

        async def stored_switched() -> bool:
            fields = {k.decode() for k in await cache.hkeys(hash_key)}
            return "NEWUSDT" in fields and gone not in fields

        await eventually(stored_switched, what="the Redis hash has the listing and not the halt")
        assert metric(service, "marketpipe_markets_pairs") == 120

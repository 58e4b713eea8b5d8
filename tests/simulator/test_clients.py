"""Real Binance clients against the simulator, as a user would point them at it: ccxt (REST and
ccxt.pro), the official Spot SDK (``binance-sdk-spot``) and the older ``binance-connector``, each
given the simulator's base URLs and nothing else (ccxt is also told to load spot markets only:
it would fetch futures markets from Binance's futures hosts otherwise). No test reaches the
internet; ccxt's markets come from the simulator's exchangeInfo."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import ccxt
import ccxt.pro
import orjson
import pytest
from binance.spot import Spot as ConnectorSpot
from binance.websocket.spot.websocket_stream import SpotWebsocketStreamClient
from binance_sdk_spot.spot import ConfigurationRestAPI, ConfigurationWebSocketStreams, Spot

from marketpipe.infra.simulator import SimulatorProcess
from marketpipe.simulator.units import parse_units
from tests.eventually import eventually, eventually_sync

PAIRS = {"BTC/USDT": "BTCUSDT", "ETH/USDT": "ETHUSDT", "BNB/USDT": "BNBUSDT"}


@pytest.fixture
def stepped_sim(exchange_sim: SimulatorProcess) -> SimulatorProcess:
    """The simulator paused after a few hundred intervals: every answer is of the same market."""
    exchange_sim.pause()
    exchange_sim.step(300)
    return exchange_sim


def ccxt_config(sim: SimulatorProcess, **extra: Any) -> dict[str, Any]:
    api = f"{sim.rest_url}/api/v3"
    return {
        "urls": {"api": {"public": api, "private": api, "ws": {"spot": f"{sim.ws_url}/ws"}}},
        "options": {"fetchMarkets": {"types": ["spot"]}},
        **extra,
    }


def levels(side: list[list[str]]) -> list[list[float]]:
    return [[float(p), float(q)] for p, q in side]


def true_trades(sim: SimulatorProcess, symbol: str) -> list[dict[str, Any]]:
    return list(sim.admin("GET", "trades", symbol=symbol))


def test_ccxt_rest(stepped_sim: SimulatorProcess) -> None:
    sim = stepped_sim
    ex = ccxt.binance(ccxt_config(sim))
    markets = ex.load_markets()
    listed = {s["symbol"] for s in sim.admin("GET", "symbols")}
    assert {m["id"] for m in markets.values()} == listed
    assert markets["BTC/USDT"]["precision"]["price"] == 0.01

    for symbol, market_id in PAIRS.items():
        true = sim.book(market_id)
        for limit in (5, 10, 20, 50, 100, 500, 1000, 5000):
            book = ex.fetch_order_book(symbol, limit)
            assert book["nonce"] == true["lastUpdateId"]
            assert book["bids"] == levels(true["bids"][:limit])
            assert book["asks"] == levels(true["asks"][:limit])

    made = true_trades(sim, "BTCUSDT")
    assert 20 < len(made) < 1000, "every trade since listing is kept"
    expected = [
        (str(t["t"]), float(t["p"]), float(t["q"]), t["T"], "sell" if t["m"] else "buy")
        for t in made
    ]
    keyed = ccxt.binance(ccxt_config(sim, apiKey="simulated"))  # ccxt wants one for this method
    for client, method in (
        (ex, "publicGetAggTrades"),
        (ex, "publicGetTrades"),
        (keyed, "publicGetHistoricalTrades"),
    ):
        got = client.fetch_trades("BTC/USDT", limit=100, params={"fetchTradesMethod": method})
        assert [(t["id"], t["price"], t["amount"], t["timestamp"], t["side"]) for t in got] == (
            expected[-100:]
        ), method
    since = made[len(made) // 2]["T"]
    got = ex.fetch_trades("BTC/USDT", since=since)
    assert [t["id"] for t in got] == [e[0] for e in expected if e[3] >= since]

    ticker = ex.fetch_ticker("BTC/USDT")
    true_ticker = sim.admin("GET", "ticker", symbol="BTCUSDT")
    assert ticker["last"] == float(made[-1]["p"]) == float(true_ticker["c"])
    assert ticker["baseVolume"] == float(true_ticker["v"])
    top = sim.book("BTCUSDT")
    assert (ticker["bid"], ticker["ask"]) == (float(top["bids"][0][0]), float(top["asks"][0][0]))
    assert set(ex.fetch_tickers()) == {m["symbol"] for m in markets.values()}
    bids_asks = ex.fetch_bids_asks(list(PAIRS))
    for symbol, market_id in PAIRS.items():
        book = sim.book(market_id)
        assert bids_asks[symbol]["bid"] == float(book["bids"][0][0])
        assert bids_asks[symbol]["askVolume"] == float(book["asks"][0][1])
    assert ex.fetch_last_prices(["BTC/USDT"])["BTC/USDT"]["price"] == float(made[-1]["p"])

    rolling = ex.fetch_ticker("BTC/USDT", {"rolling": True, "windowSize": "1h"})
    assert rolling["info"]["count"] == len(made)
    assert rolling["baseVolume"] == pytest.approx(sum(float(t["q"]) for t in made))

    for timeframe in ("1s", "1m", "1h", "1d", "1M"):
        candles = ex.fetch_ohlcv("BTC/USDT", timeframe)
        assert candles and candles[-1][4] == float(made[-1]["p"]), timeframe
        assert sum(c[5] for c in candles) == pytest.approx(sum(float(t["q"]) for t in made))
    minute = made[0]["T"] // 60_000 * 60_000  # klines are asked for by open time
    first_minute = ex.fetch_ohlcv("BTC/USDT", "1m", since=minute, limit=1)[0]
    assert first_minute[0] == minute and first_minute[1] == float(made[0]["p"])


async def test_ccxt_pro_books_equal_the_true_books(exchange_sim: SimulatorProcess) -> None:
    ex = ccxt.pro.binance(ccxt_config(exchange_sim))
    try:
        for _ in range(10):  # synced, and updated by several diffs of each pair
            await ex.watch_order_book_for_symbols(list(PAIRS))
        trades = await ex.watch_trades("BTC/USDT")
        candles = await ex.watch_ohlcv("BTC/USDT", "1m")
        await asyncio.to_thread(exchange_sim.pause)
        true = {s: await asyncio.to_thread(exchange_sim.book, i) for s, i in PAIRS.items()}
        await eventually(
            lambda: all(ex.orderbooks[s]["nonce"] == true[s]["lastUpdateId"] for s in PAIRS),
            what="books reach the simulator's last update id",
        )
        for symbol in PAIRS:
            book = ex.orderbooks[symbol]
            assert book["bids"] == levels(true[symbol]["bids"])
            assert book["asks"] == levels(true[symbol]["asks"])
    finally:
        await ex.close()
    ids = [int(t["id"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert candles[-1][0] % 60_000 == 0 and candles[-1][5] > 0


def test_official_sdk_rest(stepped_sim: SimulatorProcess) -> None:
    sim = stepped_sim
    rest = Spot(config_rest_api=ConfigurationRestAPI(base_path=sim.rest_url)).rest_api
    made = true_trades(sim, "ETHUSDT")
    true = sim.book("ETHUSDT")

    depth = rest.depth(symbol="ETHUSDT", limit=10).data()
    assert depth.last_update_id == true["lastUpdateId"] and depth.bids == true["bids"][:10]
    agg = rest.agg_trades(symbol="ETHUSDT", from_id=made[0]["t"], limit=1000).data()
    assert [(a.a, a.p, a.q, a.T, a.m) for a in agg] == [
        (t["t"], t["p"], t["q"], t["T"], t["m"]) for t in made
    ]
    assert [t.id for t in rest.get_trades(symbol="ETHUSDT", limit=5).data()] == [
        t["t"] for t in made[-5:]
    ]
    older = rest.historical_trades(symbol="ETHUSDT", from_id=made[1]["t"], limit=2).data()
    assert [t.id for t in older] == [made[1]["t"], made[2]["t"]]
    avg = rest.avg_price(symbol="ETHUSDT").data()
    volume = sum(parse_units(t["q"]) for t in made)
    weighted = sum(parse_units(t["p"]) * parse_units(t["q"]) for t in made) // volume
    assert (parse_units(avg.price), avg.close_time, avg.mins) == (weighted, made[-1]["T"], 5)

    for call in (rest.klines, rest.ui_klines):
        rows = call(symbol="ETHUSDT", interval="1m", limit=1000).data()
        assert sum(r[8] for r in rows) == len(made)
        assert sum(parse_units(r[5]) for r in rows) == volume
        assert rows[-1][4] == made[-1]["p"]

    book = rest.ticker_book_ticker(symbol="ETHUSDT").data().actual_instance
    assert (book.bid_price, book.ask_qty) == (true["bids"][0][0], true["asks"][0][1])
    several = rest.ticker_book_ticker(symbols=["ETHUSDT", "BTCUSDT"]).data().actual_instance
    assert [b.symbol for b in several] == ["ETHUSDT", "BTCUSDT"]
    prices = rest.ticker_price().data().actual_instance
    assert {p.symbol: p.price for p in prices}["ETHUSDT"] == made[-1]["p"]
    window = rest.ticker(symbol="ETHUSDT", window_size="1d").data().actual_instance
    assert (window.count, window.first_id, window.last_id) == (
        len(made),
        made[0]["t"],
        made[-1]["t"],
    )
    assert parse_units(window.volume) == volume
    day = rest.ticker24hr(symbol="ETHUSDT").data().actual_instance
    assert day.last_price == made[-1]["p"] and day.bid_price == true["bids"][0][0]
    info = rest.exchange_info(symbol="ETHUSDT").data()
    assert [s.symbol for s in info.symbols] == ["ETHUSDT"]
    assert rest.time().data().server_time > 0


async def test_official_sdk_streams_and_live_subscriptions(exchange_sim: SimulatorProcess) -> None:
    client = Spot(config_ws_streams=ConfigurationWebSocketStreams(stream_url=exchange_sim.ws_url))
    connection = await client.websocket_streams.create_connection()
    got: dict[str, list[Any]] = {}
    try:
        subscriptions = [
            ("trade", connection.trade(symbol="btcusdt")),
            ("aggTrade", connection.agg_trade(symbol="btcusdt")),
            ("kline", connection.kline(symbol="btcusdt", interval="1s")),
            ("avgPrice", connection.avg_price(symbol="ethusdt")),
            ("depth", connection.diff_book_depth(symbol="ethusdt", update_speed="1000ms")),
            ("bookTicker", connection.book_ticker(symbol="bnbusdt")),
        ]
        for kind, subscribing in subscriptions:  # one SUBSCRIBE at a time: 5 messages/s at most
            stream = await subscribing
            stream.on("message", lambda data, kind=kind: got.setdefault(kind, []).append(data))
        listed = await connection.list_subscribe()
        assert listed["result"] == [
            "btcusdt@trade",
            "btcusdt@aggTrade",
            "btcusdt@kline_1s",
            "ethusdt@avgPrice",
            "ethusdt@depth@1000ms",
            "bnbusdt@bookTicker",
        ]
        await eventually(
            lambda: len(got) >= len(subscriptions), 15, lambda: f"only {sorted(got)} arrived"
        )
        await connection.unsubscribe(["btcusdt@trade"])
        assert "btcusdt@trade" not in (await connection.list_subscribe())["result"]
    finally:
        await connection.close_connection(close_session=True)
    depth = got["depth"][-1]
    assert depth.e == "depthUpdate" and depth.s == "ETHUSDT" and depth.u >= depth.U
    kline = got["kline"][-1]
    assert kline.k.i == "1s" and kline.k.t + 999 == kline.k.T
    assert got["avgPrice"][-1].i == "5m"
    for ids in ([t.t for t in got["trade"]], [a.a for a in got["aggTrade"]]):
        assert ids == list(range(ids[0], ids[0] + len(ids))), "every trade, in order"


def test_binance_connector_rest(stepped_sim: SimulatorProcess) -> None:
    sim = stepped_sim
    spot = ConnectorSpot(base_url=sim.rest_url)
    made = true_trades(sim, "BNBUSDT")
    agg = spot.agg_trades("BNBUSDT", limit=1000)
    assert [a["a"] for a in agg] == [t["t"] for t in made]
    assert spot.avg_price("BNBUSDT")["closeTime"] == made[-1]["T"]
    assert spot.book_ticker("BNBUSDT")["bidPrice"] == sim.book("BNBUSDT")["bids"][0][0]
    assert spot.ticker_price("BNBUSDT")["price"] == made[-1]["p"]
    rows = spot.klines("BNBUSDT", "1s", limit=1000)
    assert sum(r[8] for r in rows) == len(made)
    assert spot.ui_klines("BNBUSDT", "1h") == spot.klines("BNBUSDT", "1h")
    assert spot.rolling_window_ticker("BNBUSDT", windowSize="30m")["count"] == len(made)
    assert [t["id"] for t in spot.historical_trades("BNBUSDT", limit=3)] == [
        t["t"] for t in made[-3:]
    ]


@pytest.fixture
def connector_messages(
    exchange_sim: SimulatorProcess,
) -> Iterator[tuple[SpotWebsocketStreamClient, list[dict[str, Any]], threading.Lock]]:
    received: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_message(_: Any, message: str) -> None:
        with lock:
            received.append(orjson.loads(message))

    client = SpotWebsocketStreamClient(
        stream_url=exchange_sim.ws_url, on_message=on_message, is_combined=True
    )
    yield client, received, lock
    client.stop()


def test_binance_connector_combined_streams_carry_the_names_subscribed(
    connector_messages: tuple[SpotWebsocketStreamClient, list[dict[str, Any]], threading.Lock],
) -> None:
    client, received, lock = connector_messages
    client.diff_book_depth("ethusdt", speed=1000)  # ethusdt@depth@1000ms
    client.diff_book_depth("btcusdt", speed=100)
    client.kline("bnbusdt", "1m")
    time.sleep(1.1)  # each subscription is its own message: at most 5 a second
    client.agg_trade("BTCUSDT")  # the connector lower-cases the symbol
    client.subscribe("ethusdt@avgPrice")  # no method of its own in the connector
    wanted = {
        "ethusdt@depth@1000ms",
        "btcusdt@depth@100ms",
        "bnbusdt@kline_1m",
        "btcusdt@aggTrade",
        "ethusdt@avgPrice",
    }

    def named() -> set[str]:
        with lock:
            return {m["stream"] for m in received if "stream" in m}

    eventually_sync(lambda: named() >= wanted, 20, lambda: f"only {sorted(named())}")
    assert named() == wanted
    with lock:
        replies = [m for m in received if "result" in m]
    assert all(r["result"] is None for r in replies)

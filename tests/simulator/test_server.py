"""The simulator over real sockets: conformance, streams, limits, errors and every fault type."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from itertools import pairwise
from typing import Any

import aiohttp
import orjson
import pytest

from marketpipe.infra.simulator import SimulatorProcess
from marketpipe.simulator.units import fmt, parse_units


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def strict_sim() -> Iterator[SimulatorProcess]:
    """Small limits so tests reach them quickly."""
    sim = SimulatorProcess(
        symbols=3,
        extra_args=[
            "--levels",
            "200",
            "--weight-limit",
            "30",
            "--ban-seconds",
            "30",
            "--ping-seconds",
            "0.5",
            "--pong-timeout",
            "1.5",
            "--max-age",
            "4",
        ],
    ).start()
    yield sim
    sim.stop()


async def frames(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[Any]:
    """Decoded text frames received within ``seconds`` (raw text kept when it is not JSON)."""
    out: list[Any] = []
    # One overall deadline: receive(timeout=...) restarts its clock on every ping it answers.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    out.append(orjson.loads(msg.data))
                except orjson.JSONDecodeError:
                    out.append(msg.data)
    return out


async def diffs(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[dict[str, Any]]:
    return [
        f for f in await frames(ws, seconds) if isinstance(f, dict) and f.get("e") == "depthUpdate"
    ]


def apply(book: dict[str, dict[str, str]], event: dict[str, Any]) -> None:
    for side, key in (("bids", "b"), ("asks", "a")):
        for price, qty in event[key]:
            if float(qty) == 0:
                book[side].pop(price, None)
            else:
                book[side][price] = qty


async def test_snapshot_plus_diffs_reproduces_the_true_book(exchange_sim, http) -> None:
    """binance-spot §3.1, written out: buffer, snapshot, drop stale, apply, compare."""
    async with http.ws_connect(f"{exchange_sim.ws_url}/ws/btcusdt@depth@100ms") as ws:
        buffered = await diffs(ws, 0.5)
        assert buffered, "diffs flow at 10/s"
        first_u = buffered[0]["U"]
        async with http.get(
            f"{exchange_sim.rest_url}/api/v3/depth", params={"symbol": "BTCUSDT", "limit": "5000"}
        ) as resp:
            snapshot = await resp.json()
        assert snapshot["lastUpdateId"] >= first_u
        local = {
            "bids": dict(map(tuple, snapshot["bids"])),
            "asks": dict(map(tuple, snapshot["asks"])),
        }
        local_id = snapshot["lastUpdateId"]
        buffered += await diffs(ws, 0.5)
        await asyncio.to_thread(exchange_sim.pause)
        true = await asyncio.to_thread(exchange_sim.book, "BTCUSDT")
        buffered += await diffs(ws, 0.5)
        events = [e for e in buffered if e["u"] > local_id]
        assert events[0]["U"] <= local_id + 1 <= events[0]["u"]
        for event in events:
            assert event["U"] == local_id + 1 or event is events[0]
            apply(local, event)
            local_id = event["u"]
        assert local_id == true["lastUpdateId"]
        assert list(local["bids"].items()) == sorted(
            ((p, q) for p, q in true["bids"]), key=lambda x: -float(x[0])
        ) or sorted(local["bids"].items(), key=lambda x: -float(x[0])) == [
            tuple(x) for x in true["bids"]
        ]
        assert sorted(local["asks"].items(), key=lambda x: float(x[0])) == [
            tuple(x) for x in true["asks"]
        ]


async def test_manual_clock_steps_exactly(exchange_sim, http) -> None:
    await asyncio.to_thread(exchange_sim.pause)
    async with http.ws_connect(f"{exchange_sim.ws_url}/ws/ethusdt@depth@100ms") as ws:
        await diffs(ws, 0.3)
        before = (await asyncio.to_thread(exchange_sim.book, "ETHUSDT"))["lastUpdateId"]
        await asyncio.to_thread(exchange_sim.step, 5)
        got = await diffs(ws, 0.5)
        after = (await asyncio.to_thread(exchange_sim.book, "ETHUSDT"))["lastUpdateId"]
    assert 1 <= len(got) <= 5
    assert got[0]["U"] == before + 1 and got[-1]["u"] == after


async def test_streams_have_documented_shapes(exchange_sim, http) -> None:
    names = [
        "btcusdt@trade",
        "btcusdt@aggTrade",
        "btcusdt@ticker",
        "btcusdt@miniTicker",
        "btcusdt@bookTicker",
        "!miniTicker@arr",
        "btcusdt@depth",
        "nosuchusdt@trade",
        "!ticker@arr",
    ]
    url = f"{exchange_sim.ws_url}/stream?streams={'/'.join(names)}"
    async with http.ws_connect(url) as ws:
        got = await frames(ws, 2.5)
    by_stream: dict[str, list[Any]] = {}
    for frame in got:
        by_stream.setdefault(frame["stream"], []).append(frame["data"])
    assert set(by_stream) <= set(names)
    assert "nosuchusdt@trade" not in by_stream and "!ticker@arr" not in by_stream
    ticker = by_stream["btcusdt@ticker"][0]
    ticker_keys = "e E s p P w x c Q b B a A o h l v q O C F L n"
    assert set(ticker) == set(ticker_keys.split())
    assert ticker["n"] == ticker["L"] - ticker["F"] + 1
    mini = by_stream["btcusdt@miniTicker"][0]
    assert set(mini) == {"e", "E", "s", "c", "o", "h", "l", "v", "q"}
    assert isinstance(by_stream["!miniTicker@arr"][0], list)
    trade = by_stream["btcusdt@trade"][0]
    assert set(trade) == {"e", "E", "s", "t", "p", "q", "T", "m", "M"}
    agg = by_stream["btcusdt@aggTrade"][0]
    assert set(agg) == {"e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"}
    book = by_stream["btcusdt@bookTicker"][0]
    assert set(book) == {"u", "s", "b", "B", "a", "A"}
    slow = by_stream["btcusdt@depth"]
    assert 1 <= len(slow) <= 3 and all(b["U"] == a["u"] + 1 for a, b in pairwise(slow))


async def test_live_control_messages(exchange_sim, http) -> None:
    async with http.ws_connect(f"{exchange_sim.ws_url}/ws") as ws:

        async def ask(request: Any) -> dict[str, Any]:
            await ws.send_str(
                request if isinstance(request, str) else orjson.dumps(request).decode()
            )
            while True:
                frame = orjson.loads((await ws.receive(timeout=5)).data)
                if "id" in frame:
                    return frame

        assert await ask(
            {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@depth"], "id": 1}
        ) == {"result": None, "id": 1}
        assert await ask({"method": "LIST_SUBSCRIPTIONS", "id": 3}) == {
            "result": ["btcusdt@trade", "ethusdt@depth"],
            "id": 3,
        }
        await asyncio.sleep(0.5)  # pacing: at most 5 control messages a second, as the exchange
        assert await ask({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": "a7"}) == {
            "result": None,
            "id": "a7",
        }
        assert await ask({"method": "GET_PROPERTY", "params": ["combined"], "id": 2}) == {
            "result": False,
            "id": 2,
        }
        await asyncio.sleep(1.1)  # the next second's allowance of control messages
        assert await ask({"method": "SET_PROPERTY", "params": ["combined", True], "id": 5}) == {
            "result": None,
            "id": 5,
        }
        assert await ask({"method": "GET_PROPERTY", "params": ["combined"], "id": 6}) == {
            "result": True,
            "id": 6,
        }
        await asyncio.sleep(1.1)  # the next second's allowance of control messages
        assert (await ask("{nope"))["error"]["code"] == 3
        assert (await ask({"method": "JUMP", "id": 8}))["error"]["code"] == 2
        await asyncio.sleep(1.1)  # the next second's allowance of control messages
        assert (await ask({"method": "SET_PROPERTY", "params": ["colour", True], "id": 9}))[
            "error"
        ] == {"code": 0, "msg": "Unknown property"}
        assert (await ask({"method": "SET_PROPERTY", "params": ["combined", 1], "id": 10}))[
            "error"
        ]["code"] == 1
        assert (await ask({"method": "SUBSCRIBE", "params": ["btc usdt@trade"], "id": 11}))[
            "error"
        ]["code"] == 2
        await asyncio.sleep(1.1)  # the next second's allowance of control messages
        too_many = [f"s{i}usdt@trade" for i in range(1024)]
        reply = await ask({"method": "SUBSCRIBE", "params": too_many, "id": 12})
        assert "too many streams" in reply["error"]["msg"]
        listed = await ask({"method": "LIST_SUBSCRIPTIONS", "id": 13})
        assert listed["result"] == ["ethusdt@depth"]
    async with http.get(f"{exchange_sim.url}/metrics") as resp:
        metrics = await resp.text()
    assert 'marketpipe_bad_input_total{kind="control",source="simulator_ws"} 6.0' in metrics


async def test_more_than_1024_streams_in_the_url_is_refused(exchange_sim, http) -> None:
    names = "/".join(f"s{i}usdt@trade" for i in range(1025))
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(f"{exchange_sim.ws_url}/stream?streams={names}")
    assert err.value.status == 400


async def test_more_than_five_messages_a_second_closes_1008(exchange_sim, http) -> None:
    async with http.ws_connect(f"{exchange_sim.ws_url}/ws") as ws:
        for i in range(7):
            await ws.send_str(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
        await frames(ws, 2)
        assert ws.closed and ws.close_code == 1008


async def test_weight_limit_429_then_418_with_retry_after(strict_sim, http) -> None:
    url = f"{strict_sim.rest_url}/api/v3/depth"
    statuses = []
    for _ in range(8):
        async with http.get(url, params={"symbol": "BTCUSDT"}) as resp:
            statuses.append(resp.status)
            if resp.status == 200:
                assert int(resp.headers["X-MBX-USED-WEIGHT-1M"]) == 5 * len(statuses)
            else:
                assert int(resp.headers["Retry-After"]) >= 1
                assert (await resp.json())["code"] == -1003
    assert statuses[:6] == [200] * 6 and statuses[6] == 429 and statuses[7] == 418


async def test_request_errors(exchange_sim, http) -> None:
    base = f"{exchange_sim.rest_url}/api/v3"
    cases = [
        ("/depth", {"symbol": "NOPEUSDT"}, -1121),
        ("/depth", {"symbol": "btc usdt"}, -1100),
        ("/depth", {}, -1102),
        ("/depth", {"symbol": "BTCUSDT", "bogus": "1"}, -1103),
        ("/ticker/24hr", {"symbol": "BTCUSDT", "type": "HUGE"}, -1139),
        ("/exchangeInfo", {"symbol": "NOPEUSDT"}, -1121),
    ]
    for path, params, code in cases:
        async with http.get(base + path, params=params) as resp:
            assert resp.status == 400, path
            assert (await resp.json())["code"] == code, (path, params)
    async with http.get(base + "/depth", params={"symbol": "BTCUSDT", "limit": "7"}) as resp:
        depth = await resp.json()
    assert len(depth["bids"]) == 7 and len(depth["asks"]) == 7
    async with http.get(base + "/ticker/24hr") as resp:
        assert len(await resp.json()) == 5
    async with http.get(
        base + "/ticker/24hr", params={"symbols": '["BTCUSDT","ETHUSDT"]', "type": "MINI"}
    ) as resp:
        tickers = await resp.json()
    assert [t["symbol"] for t in tickers] == ["BTCUSDT", "ETHUSDT"] and "bidPrice" not in tickers[0]
    async with http.get(base + "/trades", params={"symbol": "BTCUSDT", "limit": "3"}) as resp:
        trades = await resp.json()
    assert len(trades) <= 3 and [t["id"] for t in trades] == sorted(t["id"] for t in trades)


async def drop_like(
    sim: SimulatorProcess, http: aiohttp.ClientSession, fault: dict[str, Any]
) -> list[dict[str, Any]]:
    async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@depth@100ms") as ws:
        before = await diffs(ws, 0.3)
        await asyncio.to_thread(sim.fault, **fault)
        return before + await diffs(ws, 1.5)


async def test_fault_drop_leaves_a_gap(exchange_sim, http) -> None:
    got = await drop_like(exchange_sim, http, {"type": "drop", "symbol": "BTCUSDT", "count": 1})
    assert any(b["U"] > a["u"] + 1 for a, b in pairwise(got))


async def test_fault_duplicate_repeats_an_event(exchange_sim, http) -> None:
    got = await drop_like(exchange_sim, http, {"type": "duplicate", "count": 2})
    assert any(a == b for a, b in pairwise(got))


async def test_fault_reorder_swaps_events(exchange_sim, http) -> None:
    got = await drop_like(exchange_sim, http, {"type": "reorder", "symbol": "BTCUSDT", "count": 1})
    assert any(b["u"] < a["U"] for a, b in pairwise(got))


async def test_fault_stale_and_slow_snapshot(exchange_sim, http) -> None:
    await asyncio.to_thread(exchange_sim.fault, type="stale_snapshot", symbol="ETHUSDT", count=1)
    async with http.ws_connect(f"{exchange_sim.ws_url}/ws/ethusdt@depth@100ms") as ws:
        first = (await diffs(ws, 0.5))[0]
        url = f"{exchange_sim.rest_url}/api/v3/depth?symbol=ETHUSDT"
        async with http.get(url) as resp:
            stale = await resp.json()
        assert stale["lastUpdateId"] < first["U"]
        async with http.get(url) as resp:
            assert (await resp.json())["lastUpdateId"] >= first["U"]
    await asyncio.to_thread(exchange_sim.fault, type="slow_snapshot", seconds=1.0, count=1)
    started = time.monotonic()
    async with http.get(url) as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 1.0


async def test_fault_rest_errors(exchange_sim, http) -> None:
    for status in (429, 418, 503):
        await asyncio.to_thread(
            exchange_sim.fault, type="rest_error", status=status, count=1, retry_after=7
        )
        async with http.get(f"{exchange_sim.rest_url}/api/v3/depth?symbol=BTCUSDT") as resp:
            assert resp.status == status
            if status != 503:
                assert resp.headers["Retry-After"] == "7"
    async with http.get(f"{exchange_sim.rest_url}/api/v3/depth?symbol=BTCUSDT") as resp:
        assert resp.status == 200


@pytest.mark.parametrize("abrupt", [False, True])
async def test_fault_close(exchange_sim, http, abrupt: bool) -> None:
    async with http.ws_connect(f"{exchange_sim.ws_url}/ws/btcusdt@trade") as ws:
        await asyncio.to_thread(exchange_sim.fault, type="close", code=1011, abrupt=abrupt)
        while (msg := await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT:
            pass
        if abrupt:
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        else:
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011


async def test_fault_malformed_frames(exchange_sim, http) -> None:
    async with http.ws_connect(f"{exchange_sim.ws_url}/stream?streams=btcusdt@depth@100ms") as ws:
        for kind in ("not_json", "wrong_types", "bad_sequence"):
            await asyncio.to_thread(
                exchange_sim.fault, type="malformed", symbol="BTCUSDT", kind=kind
            )
        got = await frames(ws, 1)
    assert '{"e":"depthUpdate","E":' in got
    data = [f["data"] for f in got if isinstance(f, dict)]
    assert any(d["U"] == "x" for d in data)
    assert any(isinstance(d["u"], int) and d["u"] < d["U"] for d in data if isinstance(d["U"], int))


async def test_fault_silent_keeps_the_connection_open(exchange_sim, http) -> None:
    async with http.ws_connect(f"{exchange_sim.ws_url}/ws/btcusdt@depth@100ms") as ws:
        assert await diffs(ws, 0.5)
        await asyncio.to_thread(exchange_sim.fault, type="silent", symbol="BTCUSDT")
        await frames(ws, 0.3)
        assert await frames(ws, 1.5) == []
        assert not ws.closed


async def test_fault_mute_stream_silences_one_stream_until_resubscribed(exchange_sim, http) -> None:
    names = ["btcusdt@depth@100ms", "btcusdt@ticker", "ethusdt@depth@100ms"]
    url = f"{exchange_sim.ws_url}/stream?streams={'/'.join(names)}"

    async def streams_seen(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> set[str]:
        return {f["stream"] for f in await frames(ws, seconds) if "stream" in f}

    async with http.ws_connect(url) as ws:
        await asyncio.to_thread(exchange_sim.fault, type="mute_stream", stream=names[0])
        # a stream it does not hold stays as it is: subscribed later, it flows
        await asyncio.to_thread(exchange_sim.fault, type="mute_stream", stream="btcusdt@aggTrade")
        [conn] = await asyncio.to_thread(exchange_sim.admin, "GET", "connections")
        assert conn["muted"] == [names[0]]
        await frames(ws, 0.3)  # what was already on its way
        assert await streams_seen(ws, 1.5) == set(names[1:])  # the others flow, pings too
        await ws.send_str(
            orjson.dumps({"method": "UNSUBSCRIBE", "params": names[:1], "id": 1}).decode()
        )
        await ws.send_str(
            orjson.dumps({"method": "SUBSCRIBE", "params": names[:1], "id": 2}).decode()
        )
        assert await streams_seen(ws, 1.5) == set(names)  # subscribed again, it flows again
        # a symbol mutes its streams on that connection; clearing the faults lifts it
        await asyncio.to_thread(exchange_sim.fault, type="mute_stream", symbol="BTCUSDT")
        [conn] = await asyncio.to_thread(exchange_sim.admin, "GET", "connections")
        assert conn["muted"] == ["btcusdt@depth@100ms", "btcusdt@ticker"]
        await frames(ws, 0.3)
        assert await streams_seen(ws, 1.0) == {names[2]}
        await asyncio.to_thread(exchange_sim.clear_faults)
        await frames(ws, 0.3)
        assert await streams_seen(ws, 1.5) == set(names)
        assert not ws.closed


async def test_fault_server_shutdown_event(exchange_sim, http) -> None:
    async with http.ws_connect(f"{exchange_sim.ws_url}/stream?streams=btcusdt@trade") as ws:
        await asyncio.to_thread(exchange_sim.fault, type="server_shutdown")
        got = await frames(ws, 1)
    shutdown = [f["data"] for f in got if f["stream"] == "!serverShutdown"]
    assert len(shutdown) == 1 and shutdown[0]["e"] == "serverShutdown"


async def test_server_pings_and_closes_without_pong(strict_sim, http) -> None:
    async with http.ws_connect(f"{strict_sim.ws_url}/ws", autoping=False) as ws:
        msg = await ws.receive(timeout=3)
        assert msg.type is aiohttp.WSMsgType.PING
        await frames(ws, 3)
        assert ws.closed
    async with http.ws_connect(f"{strict_sim.ws_url}/ws") as ws:  # autoping answers: stays open
        await frames(ws, 2)
        assert not ws.closed
        while (msg := await ws.receive(timeout=5)).type is not aiohttp.WSMsgType.CLOSE:
            pass
        assert msg.data == 1000, "closed at the maximum connection age"


async def test_listing_halting_and_served_documents(exchange_sim, http) -> None:
    admin = exchange_sim.admin
    await asyncio.to_thread(admin, "POST", "symbols", {"symbol": "NEWUSDT", "price": "2.50000000"})
    async with http.get(f"{exchange_sim.rest_url}/api/v3/exchangeInfo?symbol=NEWUSDT") as resp:
        assert (await resp.json())["symbols"][0]["status"] == "TRADING"
    await asyncio.to_thread(
        admin, "POST", "symbols/status", {"symbol": "BTCUSDT", "status": "HALT"}
    )
    async with http.get(f"{exchange_sim.rest_url}/api/v3/exchangeInfo?symbol=BTCUSDT") as resp:
        assert (await resp.json())["symbols"][0]["status"] == "HALT"
    async with http.ws_connect(f"{exchange_sim.ws_url}/ws/btcusdt@depth@100ms") as ws:
        assert await frames(ws, 0.5) == []
    async with http.get(exchange_sim.assets_url) as resp:
        assets = await resp.json()
    assert (
        "NEW-USDT" in assets["others"] and "BTC-USDT" not in assets["priority"] + assets["others"]
    )
    await asyncio.to_thread(admin, "PUT", "assets", {"priority": ["ETH-USDT"], "others": []})
    async with http.get(exchange_sim.assets_url) as resp:
        assert await resp.json() == {"priority": ["ETH-USDT"], "others": []}
    await asyncio.to_thread(admin, "PUT", "settings", raw=b"garbage{", status=200)
    async with http.get(exchange_sim.settings_url) as resp:
        assert await resp.read() == b"garbage{"
    await asyncio.to_thread(admin, "DELETE", "symbols", symbol="NEWUSDT")
    async with http.get(f"{exchange_sim.rest_url}/api/v3/depth?symbol=NEWUSDT") as resp:
        assert (await resp.json())["code"] == -1121


async def rest(
    http: aiohttp.ClientSession, sim: SimulatorProcess, path: str, **params: Any
) -> tuple[int, int, Any]:
    """(status, weight used so far this minute, decoded body) of ``GET /api/v3/<path>``."""
    async with http.get(f"{sim.rest_url}/api/v3/{path}", params=params) as resp:
        return resp.status, int(resp.headers["X-MBX-USED-WEIGHT-1M"]), await resp.json()


async def test_market_data_endpoints_weights_and_errors(exchange_sim, http) -> None:
    symbols = '["BTCUSDT","ETHUSDT"]'
    weighed = [
        ("aggTrades", {"symbol": "BTCUSDT"}, 4),
        ("historicalTrades", {"symbol": "BTCUSDT"}, 25),
        ("avgPrice", {"symbol": "BTCUSDT"}, 2),
        ("klines", {"symbol": "BTCUSDT", "interval": "1m"}, 2),
        ("uiKlines", {"symbol": "BTCUSDT", "interval": "1M"}, 2),
        ("ticker/bookTicker", {"symbol": "BTCUSDT"}, 2),
        ("ticker/bookTicker", {"symbols": symbols}, 4),
        ("ticker/bookTicker", {}, 4),
        ("ticker/price", {"symbol": "BTCUSDT"}, 2),
        ("ticker/price", {}, 4),
        ("ticker", {"symbol": "BTCUSDT"}, 4),
        ("ticker", {"symbols": symbols, "windowSize": "15m"}, 8),
    ]
    _, used, _ = await rest(http, exchange_sim, "ping")
    for path, params, weight in weighed:
        status, now_used, _ = await rest(http, exchange_sim, path, **params)
        assert (status, now_used - used) == (200, weight), (path, params)
        used = now_used
    errors = [
        ("aggTrades", {"symbol": "BTCUSDT", "startTime": "0", "endTime": "3600001"}, -1127),
        ("aggTrades", {"symbol": "BTCUSDT", "fromId": "x"}, -1100),
        ("klines", {"symbol": "BTCUSDT"}, -1102),
        ("klines", {"symbol": "BTCUSDT", "interval": "2m"}, -1120),
        ("klines", {"symbol": "BTCUSDT", "interval": "1m", "timeZone": "15"}, -1130),
        ("klines", {"symbol": "NOPEUSDT", "interval": "1m"}, -1121),
        ("ticker", {}, -1102),
        ("ticker", {"symbol": "BTCUSDT", "windowSize": "1d2h"}, -1130),
        ("ticker", {"symbol": "BTCUSDT", "type": "HUGE"}, -1139),
        ("ticker", {"symbols": orjson.dumps([f"S{i}USDT" for i in range(101)]).decode()}, -1101),
        ("ticker/price", {"symbols": '["BTCUSDT","BTCUSDT"]'}, -1151),
        ("ticker/price", {"symbol": "BTCUSDT", "symbols": symbols}, -1128),
        ("ticker/bookTicker", {"symbol": "BTCUSDT", "symbolStatus": "HALT"}, -1220),
    ]
    for path, params, code in errors:
        status, _, body = await rest(http, exchange_sim, path, **params)
        assert (status, body["code"]) == (400, code), (path, params)
    _, _, halted = await rest(http, exchange_sim, "ticker/price", symbolStatus="HALT")
    assert halted == []


async def test_klines_windows_and_average_add_up_to_the_trades(exchange_sim, http) -> None:
    await asyncio.to_thread(exchange_sim.pause)
    await asyncio.to_thread(exchange_sim.step, 200)
    _, _, trades = await rest(http, exchange_sim, "aggTrades", symbol="ETHUSDT", limit=1000)
    assert 0 < len(trades) < 1000, "every trade since listing is kept"
    volume = sum(parse_units(t["q"]) for t in trades)
    quote = sum(parse_units(t["p"]) * parse_units(t["q"]) // 10**8 for t in trades)
    for interval in ("1s", "1m", "15m", "1h", "1d", "1w", "1M"):
        _, _, rows = await rest(
            http, exchange_sim, "klines", symbol="ETHUSDT", interval=interval, limit=1000
        )
        assert sum(r[8] for r in rows) == len(trades), interval
        assert sum(parse_units(r[5]) for r in rows) == volume
        assert sum(parse_units(r[7]) for r in rows) == quote
        assert rows[-1][4] == trades[-1]["p"] and all(len(r) == 12 for r in rows)
    taker = [t for t in trades if not t["m"]]
    _, _, rows = await rest(http, exchange_sim, "klines", symbol="ETHUSDT", interval="1h")
    assert parse_units(rows[-1][9]) == sum(parse_units(t["q"]) for t in taker)
    _, _, window = await rest(http, exchange_sim, "ticker", symbol="ETHUSDT", windowSize="1h")
    assert (window["firstId"], window["lastId"], window["count"]) == (
        trades[0]["a"],
        trades[-1]["a"],
        len(trades),
    )
    assert parse_units(window["volume"]) == volume and window["openTime"] % 60_000 == 0
    _, _, mini = await rest(
        http, exchange_sim, "ticker", symbols='["ETHUSDT"]', windowSize="1h", type="MINI"
    )
    assert set(mini[0]) == set(window) - {"priceChange", "priceChangePercent", "weightedAvgPrice"}
    _, _, avg = await rest(http, exchange_sim, "avgPrice", symbol="ETHUSDT")
    weighted = sum(parse_units(t["p"]) * parse_units(t["q"]) for t in trades) // volume
    assert avg == {"mins": 5, "price": fmt(weighted), "closeTime": trades[-1]["T"]}
    _, _, page = await rest(
        http, exchange_sim, "aggTrades", symbol="ETHUSDT", fromId=trades[3]["a"], limit=2
    )
    assert page == trades[3:5]
    _, _, timed = await rest(
        http, exchange_sim, "aggTrades", symbol="ETHUSDT", startTime=trades[-1]["T"]
    )
    assert timed == [t for t in trades if t["T"] >= trades[-1]["T"]]
    true = await asyncio.to_thread(exchange_sim.book, "ETHUSDT")
    _, _, book = await rest(http, exchange_sim, "ticker/bookTicker", symbol="ETHUSDT")
    assert book == {
        "symbol": "ETHUSDT",
        "bidPrice": true["bids"][0][0],
        "bidQty": true["bids"][0][1],
        "askPrice": true["asks"][0][0],
        "askQty": true["asks"][0][1],
    }
    _, _, prices = await rest(http, exchange_sim, "ticker/price")
    assert {"symbol": "ETHUSDT", "price": trades[-1]["p"]} in prices and len(prices) == 5


async def test_any_ws_path_opens_and_names_are_echoed_as_subscribed(exchange_sim, http) -> None:
    async def ask(ws: aiohttp.ClientWebSocketResponse, request: dict[str, Any]) -> Any:
        await ws.send_str(orjson.dumps(request).decode())
        while "id" not in (frame := orjson.loads((await ws.receive(timeout=5)).data)):
            pass
        return frame["result"]

    for path, listed in (("/ws/0", []), ("/ws/btcusdt@trade/nonsense/1", ["btcusdt@trade"])):
        async with http.ws_connect(exchange_sim.ws_url + path) as ws:
            assert await ask(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == listed
            uuid = "6a1b3f2e-9c4d-4e8f-a1b2-c3d4e5f60718"  # the official SDK's kind of id
            subscribe = {"method": "SUBSCRIBE", "params": ["ethusdt@trade"], "id": uuid}
            assert await ask(ws, subscribe) is None
            assert await ask(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2}) == [
                *listed,
                "ethusdt@trade",
            ]
    names = ["ethusdt@depth@1000ms", "ethusdt@depth", "BTCUSDT@trade", "btcusdt@kline_1s"]
    async with http.ws_connect(f"{exchange_sim.ws_url}/stream?streams={'/'.join(names)}") as ws:
        got = await frames(ws, 2.5)
        assert await ask(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3}) == names
    streams = [f["stream"] for f in got if "stream" in f]
    assert set(streams) == set(names)
    by_name = {f["stream"]: f["data"] for f in got if "stream" in f}
    assert by_name["ethusdt@depth@1000ms"]["u"] == by_name["ethusdt@depth"]["u"]


async def test_kline_and_average_price_streams(exchange_sim, http) -> None:
    names = ["btcusdt@kline_1s", "ethusdt@kline_1m", "bnbusdt@kline_1h@+08:00", "btcusdt@avgPrice"]
    async with http.ws_connect(f"{exchange_sim.ws_url}/stream?streams={'/'.join(names)}") as ws:
        got = await frames(ws, 4.5)
    by_stream: dict[str, list[Any]] = {}
    for frame in got:
        by_stream.setdefault(frame["stream"], []).append(frame["data"])
    assert set(by_stream) == set(names)
    kline_keys = set(
        ["t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"]
    )
    for name in names[:3]:
        events = by_stream[name]
        assert all(set(e) == {"e", "E", "s", "k"} and set(e["k"]) == kline_keys for e in events)
    seconds = by_stream["btcusdt@kline_1s"]
    assert len(seconds) >= 4, "1s klines: every second"
    closed = [e["k"] for e in seconds if e["k"]["x"]]
    assert closed and all(k["T"] == k["t"] + 999 for k in closed)
    assert 1 <= len(by_stream["ethusdt@kline_1m"]) <= 4, "every 2 s"
    local_hour = by_stream["bnbusdt@kline_1h@+08:00"][0]["k"]
    assert local_hour["i"] == "1h" and local_hour["t"] % 3_600_000 == 0
    average = by_stream["btcusdt@avgPrice"][-1]
    assert set(average) == {"e", "E", "s", "i", "w", "T"} and average["i"] == "5m"

"""The tickers service: message shape, and end to end against the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson
from feed_harness import blocking, feed_stack

from marketpipe.exchange.messages import decode_combined
from marketpipe.infra.local import NatsCluster, RedisServer
from marketpipe.infra.services import metric
from marketpipe.services.feed_messages import ticker_message
from tests.eventually import eventually

TICKER_KEYS = [
    "e",
    "E",
    "s",
    "p",
    "P",
    "w",
    "c",
    "Q",
    "b",
    "B",
    "a",
    "A",
    "o",
    "h",
    "l",
    "v",
    "q",
    "O",
    "C",
    "F",
    "L",
    "n",
]

FRAME = {
    "stream": "btcusdt@ticker",
    "data": {
        "e": "24hrTicker", "E": 1765432101000, "s": "BTCUSDT", "p": "-512.30000000",
        "P": "-0.830", "w": "61544.12000000", "x": "61746.30000000", "c": "61234.02000000",
        "Q": "0.00300000", "b": "61234.01000000", "B": "0.40000000", "a": "61234.02000000",
        "A": "0.10300000", "o": "61746.32000000", "h": "62100.00000000",
        "l": "60800.00000000", "v": "15234.11000000", "q": "937599345.12000000",
        "O": 1765345701000, "C": 1765432101000, "F": 3990000000, "L": 3991234568,
        "n": 1234569,
    },
}  # fmt: skip


def test_ticker_message_is_the_exchange_payload() -> None:
    event = decode_combined(orjson.dumps(FRAME)).data
    assert orjson.loads(ticker_message(event)) == FRAME["data"]


def test_ticker_without_x_has_no_null() -> None:
    data = {k: v for k, v in FRAME["data"].items() if k != "x"}
    event = decode_combined(orjson.dumps({"stream": "btcusdt@ticker", "data": data})).data
    message = orjson.loads(ticker_message(event))
    assert message == data
    assert set(TICKER_KEYS) <= set(message)
    assert msgspec.json.decode(ticker_message(event))["s"] == "BTCUSDT"


# --- end to end: simulator -> tickers service (subprocess) -> NATS cluster + Redis --------------

TIME_KEYS = {"E", "O", "C"}  # the rolling window moves with the clock even while paused


# marketpipe's own fields beside the exchange's (DESIGN §8, §9)
STAMP_KEYS = ("epoch", "shard")


def _stats(ticker: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ticker.items() if k not in TIME_KEYS and k not in STAMP_KEYS}


async def test_tickers_equal_the_simulator_statistics_at_quiescence(
    nats_cluster: NatsCluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with feed_stack(
        "tickers", "tickers.>", nats_cluster, redis_server, tmp_path, seed=11
    ) as stack:
        sim, recorder = stack.sim, stack.recorder
        symbols = [s["symbol"] for s in await blocking(sim.admin, "GET", "symbols")]
        assert len(symbols) == 120
        await eventually(  # tickers of every pair are flowing
            lambda: all(recorder.messages.get(f"tickers.{s}") for s in symbols), within=30
        )
        await blocking(sim.fault, type="malformed", kind="not_json")
        await blocking(sim.pause)
        truth = {s: _stats(await blocking(sim.admin, "GET", "ticker", symbol=s)) for s in symbols}

        left = list(symbols)  # pairs whose last ticker, on NATS or in Redis, is not the truth yet

        async def settled() -> bool:  # every ticker stream has sent the final statistics
            keys = [f"{stack.prefix}ticker:{s}" for s in symbols]
            cached = dict(zip(symbols, await stack.redis.mget(keys), strict=True))
            left[:] = [
                s
                for s in symbols
                if _stats(orjson.loads(recorder.messages[f"tickers.{s}"][-1])) != truth[s]
                or cached[s] is None
                or _stats(orjson.loads(cached[s])) != truth[s]
            ]
            return not left

        await eventually(settled, within=15, what=lambda: f"apart: {left[:5]}")
        for symbol in symbols:
            published = recorder.decoded(f"tickers.{symbol}")
            assert published, symbol
            last = published[-1]
            assert set(TICKER_KEYS) <= set(last)
            assert _stats(last) == truth[symbol], symbol
            times = [m["E"] for m in published]
            assert times == sorted(set(times)), "a ticker went backwards or twice"
            cached = await stack.redis.get(f"{stack.prefix}ticker:{symbol}")
            # tickers keep coming each second while paused: Redis may be one behind or ahead
            assert cached is not None and _stats(orjson.loads(cached)) == truth[symbol]
        kind = "not_json_object"  # counted by the stream hub: not a combined frame at all
        assert metric(stack.service, "marketpipe_bad_input_total", source="exchange_ws", kind=kind)

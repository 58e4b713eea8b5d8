"""What the gateway tests share: contract-shaped messages and a client's side of the protocol."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from nats.aio.client import Client as Nats


def book(update_id: int, seq: int = 1, epoch: int = 1, symbol: str = "BTCUSDT") -> dict[str, Any]:
    return {
        "symbol": symbol,
        "lastUpdateId": update_id,
        "E": 1_700_000_000_000 + update_id,
        "seq": seq,
        "epoch": epoch,
        "bids": [["100.00", "1.5"], ["99.99", "2"]],
        "asks": [["100.01", "0.5"]],
    }


def trade(trade_id: int, symbol: str = "BTCUSDT") -> dict[str, Any]:
    return {
        "e": "trade", "E": 1_700_000_000_000 + trade_id, "s": symbol, "t": trade_id,
        "p": "100.00", "q": "0.01", "T": 1_700_000_000_000 + trade_id, "m": True, "sd": "SELL",
    }  # fmt: skip


def ticker(event_time: int, symbol: str = "BTCUSDT", last: str = "100.00") -> dict[str, Any]:
    return {"e": "24hrTicker", "E": event_time, "s": symbol, "c": last, "p": "1.0", "P": "1.0"}


async def publish(nc: Nats, subject: str, message: Any) -> None:
    await nc.publish(subject, orjson.dumps(message))
    await nc.flush()


async def receive(ws: aiohttp.ClientWebSocketResponse, within: float = 3.0) -> Any:
    msg = await ws.receive(timeout=within)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def request(
    ws: aiohttp.ClientWebSocketResponse, action: str, topics: Any, request_id: Any = 1
) -> Any:
    await ws.send_bytes(orjson.dumps({"action": action, "topics": topics, "id": request_id}))
    return await receive(ws)


async def nothing_arrives(ws: aiohttp.ClientWebSocketResponse, within: float = 0.3) -> bool:
    try:
        msg = await ws.receive(timeout=within)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected message {msg}")


async def metrics(http: aiohttp.ClientSession, base_url: str) -> str:
    async with http.get(base_url + "/metrics") as resp:
        return await resp.text()


def metric_value(text: str, name_and_labels: str) -> float:
    """The value of one sample (``name{labels}`` exactly as exposed), 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name_and_labels + " "):
            return float(line.split()[-1])
    return 0.0

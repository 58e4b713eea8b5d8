"""Frames the gateway writes itself (clients that keep up) decode intact and in order."""

from __future__ import annotations

import aiohttp
import nats
import orjson
import pytest

from marketpipe.gateway.server import text_frame_header
from tests.gateway.conftest import GatewayFactory

pytestmark = pytest.mark.timeout(60)

# one of each header form (7-bit, 16-bit and 64-bit lengths) and the edges between them
PADDINGS = [0, 60, 125, 126, 65_535, 65_536, 200_000]


def test_header_lengths_follow_rfc_6455() -> None:
    assert text_frame_header(125) == b"\x81\x7d"
    assert text_frame_header(126) == b"\x81\x7e\x00\x7e"
    assert text_frame_header(65_535) == b"\x81\x7e\xff\xff"
    assert text_frame_header(65_536) == b"\x81\x7f" + (65_536).to_bytes(8, "big")


async def test_frames_of_every_header_size_arrive_intact_and_in_order(
    start_gateway: GatewayFactory,
) -> None:
    gateway = start_gateway()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(gateway.ws_url, max_msg_size=0) as ws,
    ):
        await ws.send_str('{"action":"subscribe","topics":"trades@SOLUSDT"}')
        assert orjson.loads((await ws.receive(timeout=5)).data)["result"] == "subscribed"
        nc = await nats.connect(gateway.nats_url)
        sent = []
        for t, size in enumerate(PADDINGS * 3):
            trade = {"e": "trade", "s": "SOLUSDT", "t": t, "pad": "x" * size}
            sent.append(trade)
            await nc.publish("trades.SOLUSDT", orjson.dumps(trade))
        await nc.flush()
        await nc.close()
        for trade in sent:
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            assert orjson.loads(msg.data) == {"topic": "trades@SOLUSDT", "data": trade}

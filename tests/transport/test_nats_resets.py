"""A NATS connection reset under a publisher on uvloop (as the services run): publishing never
raises to the caller, and resumes once nats-py has reconnected."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from marketpipe.infra.local import NatsCluster
from marketpipe.infra.proxy import FaultProxy
from tests.eventually import eventually
from tests.transport.test_nats_client import Inbox, _connected, _publish_until_seen


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


async def test_resets_while_publishing_never_raise_and_publishing_resumes(
    nats_cluster: NatsCluster, node_proxy: FaultProxy
) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    pub = await _connected(node_proxy.url("nats"), "r1.")
    sub = await _connected(nats_cluster.urls[1], "r1.")
    inbox = Inbox()
    await sub.subscribe("orderbook.*", inbox)
    await sub.flush()
    await _publish_until_seen(pub, "orderbook.PROBE", inbox)
    book = b"b" * 16_000
    for round_ in range(5):
        reset_after = 50 + 37 * round_  # lands at a different point of the writes each time
        for n in range(400):
            if n == reset_after:
                node_proxy.reset()
            pub.publish_now("orderbook.BTCUSDT", book)
            pub.send_queued()
            if n % 10 == 0:
                await asyncio.sleep(0)  # a turn of the loop: the flusher writes
        marker = f"round-{round_}".encode()
        await eventually(lambda: pub.connected, within=15)
        pub.publish_now("orderbook.BTCUSDT", marker)
        await pub.flush()
        await inbox.wait_for(marker)
    await pub.drain()
    await sub.drain()

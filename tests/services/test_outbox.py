"""The feeds' outbox, in process against a real NATS cluster: a message the NATS client refuses
(its buffer is full while the connection is down) waits first in line and is published once NATS
takes it again, in order: refused is never recorded as released."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from marketpipe.config import Settings
from marketpipe.infra.local import NatsCluster
from marketpipe.infra.proxy import FaultProxy
from marketpipe.services.feed import Outbox
from marketpipe.services.runtime import ServiceContext
from marketpipe.transport.nats import NatsClient
from tests.eventually import eventually
from tests.transport.test_nats_client import Inbox, _connected, _publish_until_seen

MESSAGES = 500


@pytest.fixture
def node_proxy(isolated_cluster: NatsCluster) -> Iterator[FaultProxy]:
    """The only way to NATS for the publisher: its servers advertise no other address."""
    proxy = FaultProxy(target_port=isolated_cluster.client_ports[0]).start()
    yield proxy
    proxy.stop()


async def test_refused_messages_wait_and_all_arrive_in_order(
    isolated_cluster: NatsCluster, node_proxy: FaultProxy
) -> None:
    nats_cluster = isolated_cluster
    settings = Settings(nats_urls=[node_proxy.url("nats")], etcd_endpoints=[])
    ctx = ServiceContext("outbox-test", settings, use_redis=False, elect=False)
    # a small buffer for the time NATS is away: most of the burst is refused by the client
    ctx.nats = NatsClient(settings.nats_urls, reconnect_buffer_bytes=20_000)
    await ctx.nats.connect()
    await ctx.leadership.start(ctx.tasks)
    sub = await _connected(nats_cluster.urls[1])
    inbox = Inbox()
    await sub.subscribe("trades.*", inbox)
    await sub.flush()
    await _publish_until_seen(ctx.nats, "trades.PROBE", inbox)
    outbox = Outbox(ctx, "trades")
    await outbox.start()
    try:
        node_proxy.refuse()
        await eventually(lambda: not ctx.nats.connected)
        for t in range(MESSAGES):
            outbox.put("trades.BTCUSDT", orjson.dumps({"t": t, "pad": "x" * 150}))
        await eventually(lambda: len(outbox) > MESSAGES // 2, what="refusals keep messages")
        node_proxy.heal()
        await eventually(lambda: len(outbox) == 0, within=30)
        await ctx.nats.flush()
        await eventually(lambda: sum(s == "trades.BTCUSDT" for s, _ in inbox.messages) >= MESSAGES)
        ids = [orjson.loads(d)["t"] for s, d in inbox.messages if s == "trades.BTCUSDT"]
        assert ids == list(range(MESSAGES))
    finally:
        await outbox.stop()
        await ctx.tasks.stop()
        await ctx.nats.drain()
        await ctx.http.close()
        await sub.drain()

"""NatsClient against a real 3-node cluster: cross-node delivery, node loss, oversize payloads."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from marketpipe.infra.local import NatsCluster
from marketpipe.transport.nats import OUTGOING_LIMIT_BYTES, NatsClient, PayloadTooLargeError
from tests.eventually import eventually


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    async def __call__(self, subject: str, data: bytes) -> None:
        self.messages.append((subject, data))

    async def wait_for(self, last: bytes) -> None:
        """Until the last message that arrived is ``last``."""
        await eventually(lambda: self.messages and self.messages[-1][1] == last, 5, repr(last))


async def _connected(url: str | list[str], prefix: str = "") -> NatsClient:
    client = NatsClient([url] if isinstance(url, str) else url, subject_prefix=prefix)
    await client.connect()
    return client


async def _publish_until_seen(pub: NatsClient, subject: str, inbox: Inbox) -> None:
    """Interest crosses cluster routes asynchronously: publish probes until one arrives."""

    async def seen() -> bool:
        if inbox.messages:
            return True
        await pub.publish(subject, b"probe")
        await pub.flush()
        return False

    await eventually(seen, 5, "a probe arrived")


async def _linked(
    pub_url: str, sub_url: str, prefix: str, channel: str
) -> tuple[NatsClient, NatsClient, Inbox]:
    """A publisher and a subscriber to ``<channel>.*`` whose interest has reached the publisher."""
    pub = await _connected(pub_url, prefix)
    sub = await _connected(sub_url, prefix)
    inbox = Inbox()
    await sub.subscribe(f"{channel}.*", inbox)
    await sub.flush()
    await _publish_until_seen(pub, f"{channel}.PROBE", inbox)
    return pub, sub, inbox


async def test_published_on_one_node_arrives_through_another(nats_cluster: NatsCluster) -> None:
    pub, sub, inbox = await _linked(nats_cluster.urls[0], nats_cluster.urls[2], "t1.", "trades")
    before = REGISTRY.get_sample_value("marketpipe_published_messages_total", {"channel": "trades"})
    await pub.publish("trades.BTCUSDT", b'{"t":1}')
    await pub.flush()
    await inbox.wait_for(b'{"t":1}')
    # the prefix is added on the way out and stripped on the way in
    assert inbox.messages[-1] == ("trades.BTCUSDT", b'{"t":1}')
    after = REGISTRY.get_sample_value("marketpipe_published_messages_total", {"channel": "trades"})
    assert after == (before or 0) + 1
    await pub.drain()
    await sub.drain()


async def test_oversize_payload_fails_loudly(nats_cluster: NatsCluster) -> None:
    pub = await _connected(nats_cluster.urls[0])
    labels = {"channel": "markets", "reason": "too_large"}
    before = REGISTRY.get_sample_value("marketpipe_publish_errors_total", labels) or 0
    with pytest.raises(PayloadTooLargeError) as caught:
        await pub.publish("markets.SNAPSHOT", b"x" * (pub.max_payload + 1))
    assert caught.value.limit == pub.max_payload
    assert "max_payload" in str(caught.value)
    assert REGISTRY.get_sample_value("marketpipe_publish_errors_total", labels) == before + 1
    # the client is still usable afterwards
    await pub.publish("markets.SNAPSHOT", b"{}")
    await pub.flush()
    await pub.drain()


async def test_publisher_survives_the_kill_of_its_node(fresh_nats_cluster: NatsCluster) -> None:
    cluster = fresh_nats_cluster
    pub = await _connected(cluster.urls)
    node = cluster.client_ports.index(int(pub.connected_url.rsplit(":", 1)[1]))  # type: ignore[union-attr]
    other = cluster.urls[(node + 1) % 3]
    sub = await _connected(other)
    inbox = Inbox()
    await sub.subscribe("orderbook.>", inbox)
    await sub.flush()
    await _publish_until_seen(pub, "orderbook.PROBE", inbox)

    cluster.nodes[node].kill()
    sent = 0
    async with asyncio.timeout(10):
        while not (
            pub.connected
            and pub.connected_url
            and str(cluster.client_ports[node]) not in pub.connected_url
        ):
            await pub.publish("orderbook.BTCUSDT", str(sent).encode())
            sent += 1
            await asyncio.sleep(0.005)  # pacing: a steady stream across the failover
    for _ in range(100):
        await pub.publish("orderbook.BTCUSDT", str(sent).encode())
        sent += 1
    await pub.flush()
    await inbox.wait_for(str(sent - 1).encode())
    received = [int(d) for s, d in inbox.messages if s == "orderbook.BTCUSDT"]
    # at-most-once across the failover, but the stream goes on, in order, without duplicates
    assert received == sorted(set(received))
    assert received[-1] == sent - 1
    await pub.drain()
    await sub.drain()


async def test_publishing_on_a_closed_client_is_dropped_and_counted(
    nats_cluster: NatsCluster,
) -> None:
    pub = await _connected(nats_cluster.urls[0])
    await pub.drain()
    labels = {"channel": "trades", "reason": "ConnectionClosedError"}
    before = REGISTRY.get_sample_value("marketpipe_publish_errors_total", labels) or 0
    pub.publish_now("trades.BTCUSDT", b"{}")  # never raises: the caller's loop goes on
    await pub.publish("trades.BTCUSDT", b"{}")
    assert REGISTRY.get_sample_value("marketpipe_publish_errors_total", labels) == before + 2


async def test_publish_now_keeps_order_with_publish(nats_cluster: NatsCluster) -> None:
    pub, sub, inbox = await _linked(nats_cluster.urls[0], nats_cluster.urls[0], "t2.", "orderbook")
    for n in range(200):  # both kinds share nats-py's one outgoing buffer
        if n % 2:
            pub.publish_now("orderbook.BTCUSDT", str(n).encode())
            if n % 3 == 0:
                pub.send_queued()
        else:
            await pub.publish("orderbook.BTCUSDT", str(n).encode())
    await inbox.wait_for(b"199")
    received = [int(d) for s, d in inbox.messages if s == "orderbook.BTCUSDT"]
    assert received == list(range(200))
    await pub.drain()
    await sub.drain()


async def test_a_stalled_server_costs_bounded_memory(fresh_nats_cluster: NatsCluster) -> None:
    node = fresh_nats_cluster.nodes[0]
    pub = await _connected(fresh_nats_cluster.urls[0])
    labels = {"channel": "orderbook", "reason": "OutboundBufferLimitError"}
    before = REGISTRY.get_sample_value("marketpipe_publish_errors_total", labels) or 0
    book = b"x" * 64_000
    node.pause()  # connected, but nothing leaves the socket any more
    try:
        for n in range(3 * OUTGOING_LIMIT_BYTES // len(book)):
            pub.publish_now("orderbook.BTCUSDT", book)
            pub.send_queued()  # only while the socket takes it
            if n % 100 == 0:
                await asyncio.sleep(0)  # the flusher hands what it can to the socket
            assert pub.outgoing_bytes <= OUTGOING_LIMIT_BYTES
        dropped = REGISTRY.get_sample_value("marketpipe_publish_errors_total", labels) or 0
        assert dropped - before > OUTGOING_LIMIT_BYTES // len(book)
    finally:
        node.resume()
    await pub.drain()

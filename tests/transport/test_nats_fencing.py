"""Fencing on the NATS side (DESIGN §8): what a term queued never arrives once the term ended,
even when the connection was stalled with the term's bytes already in it."""

from __future__ import annotations

import asyncio

from marketpipe.ha.term import LeaseClock, Term
from marketpipe.infra.local import NatsCluster
from marketpipe.infra.proxy import FaultProxy
from marketpipe.transport.nats import NatsClient
from tests.eventually import eventually
from tests.transport.test_nats_client import Inbox, _connected, _publish_until_seen


async def _pub_through(
    proxy: FaultProxy, sub_url: str, prefix: str
) -> tuple[NatsClient, NatsClient, Inbox]:
    pub = await _connected(proxy.url("nats"), prefix)
    sub = await _connected(sub_url, prefix)
    inbox = Inbox()
    await sub.subscribe("orderbook.*", inbox)
    await sub.flush()
    await _publish_until_seen(pub, "orderbook.PROBE", inbox)
    return pub, sub, inbox


async def test_a_stalled_terms_bytes_never_arrive_after_it_ended(
    nats_cluster: NatsCluster, node_proxy: FaultProxy
) -> None:
    pub, sub, inbox = await _pub_through(node_proxy, nats_cluster.urls[1], "f1.")
    old = Term(epoch=5, lease=LeaseClock())
    pub.publish_now("orderbook.BTCUSDT", b"old-before", old)
    await pub.flush()
    await inbox.wait_for(b"old-before")

    node_proxy.stall()
    book = b"x" * 16_000
    for _ in range(2000):  # ~32 MB: into the socket (held by the stall) and into the queue
        pub.publish_now("orderbook.BTCUSDT", book, old)
        pub.send_queued()
        await asyncio.sleep(0)  # a turn of the loop: the flusher writes what the socket takes
    await eventually(lambda: int(node_proxy.status()["held_bytes"]) > 100_000)
    old.end("lease_lost")
    pub.discard(old)
    pub.reset_connection()
    # the RST leaves at the loop's next turn, as it would in the leader (whose lease deadline
    # is before the server's expiry: a heal in that instant still precedes any new leader)
    await asyncio.sleep(0.1)
    node_proxy.heal()

    new = Term(epoch=6, lease=LeaseClock())
    await eventually(lambda: pub.connected, within=15)
    pub.publish_now("orderbook.BTCUSDT", b"new-first", new)
    await pub.flush()
    await inbox.wait_for(b"new-first")
    await asyncio.sleep(0.5)  # anything the stall still held would have arrived by now
    payloads = [d for s, d in inbox.messages if s == "orderbook.BTCUSDT"]
    assert payloads == [b"old-before", b"new-first"]
    await pub.drain()
    await sub.drain()


async def test_a_publish_whose_term_ended_in_the_queue_is_not_sent(
    nats_cluster: NatsCluster,
) -> None:
    pub = await _connected(nats_cluster.urls[0], "f2.")
    sub = await _connected(nats_cluster.urls[0], "f2.")
    inbox = Inbox()
    await sub.subscribe("orderbook.*", inbox)
    await sub.flush()
    await _publish_until_seen(pub, "orderbook.PROBE", inbox)
    lease = LeaseClock()
    term = Term(epoch=1, lease=lease)
    pub.publish_now("orderbook.BTCUSDT", b"late", term)
    lease.deadline = 0.0  # the lease ran out before the loop's next turn sent it
    pub.publish_now("orderbook.BTCUSDT", b"unfenced")
    await pub.flush()
    await inbox.wait_for(b"unfenced")
    assert [d for s, d in inbox.messages if s == "orderbook.BTCUSDT"] == [b"unfenced"]
    await pub.drain()
    await sub.drain()


def test_credentials_never_reach_the_logs() -> None:
    from marketpipe.transport.nats import redact_url

    assert redact_url("nats://user:s3cret@10.0.0.1:4222") == "nats://***@10.0.0.1:4222"
    assert redact_url("nats://token@host") == "nats://***@host"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"

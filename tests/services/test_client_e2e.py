"""The client library end to end (DESIGN §10): simulator -> orderbook -> NATS, Redis -> gateway.

The orderbook runs against the paused simulator as in ``test_orderbook_e2e`` (every true book is
recorded after each step), with a gateway beside it. Two users of ``marketpipe.client`` follow
a few pairs, one over NATS directly, one over the gateway's ``depth@`` channel, while the
exchange faults of the orderbook tests hit those pairs and the gateway is restarted. Every book
either user got equals the true view at its ``lastUpdateId``; every checksum was verified; the
resyncs are counted with their reasons, and each has a cause the test made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_orderbook_e2e import SETTINGS, Rig, paused_sim, running_rig, view_of

from marketpipe.client.book import Book
from marketpipe.client.gateway import GatewayClient
from marketpipe.client.nats import NatsMarketClient
from marketpipe.infra.local import NatsCluster, RedisServer
from marketpipe.infra.services import service_env, service_port, start_service
from marketpipe.infra.simulator import SimulatorProcess
from marketpipe.transport.nats import NatsClient
from tests.eventually import eventually

__all__ = ["paused_sim"]  # the fixture, from the orderbook tests

pytestmark = pytest.mark.timeout(240)
FOLLOWED = 6


def check_books(rig: Rig, books: list[Book]) -> None:
    for book in books:
        truth = rig.truth[book.symbol]
        assert book.last_update_id in truth, (book.symbol, book.last_update_id)
        bids, asks = view_of(SETTINGS, book.symbol, *truth[book.last_update_id])
        assert [list(level) for level in book.bids] == bids, (book.symbol, book.seq)
        assert [list(level) for level in book.asks] == asks, (book.symbol, book.seq)


async def follow(client: Any, symbol: str, into: list[Book]) -> None:
    async for book in client.books(symbol):
        into.append(book)


async def test_users_books_equal_the_published_views_under_faults_and_a_gateway_restart(
    paused_sim: SimulatorProcess,
    nats_cluster: NatsCluster,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    async with running_rig(paused_sim, nats_cluster, redis_server, tmp_path) as rig:
        everyone = set(rig.symbols)
        await rig.drive_until(lambda: rig.recorder.live() == everyone, within=60)
        env = service_env(
            rig.sim,
            nats_cluster,
            redis_server,
            subject_prefix=rig.recorder.prefix,
            redis_prefix=rig.redis_prefix,
        )
        gateway = await asyncio.to_thread(start_service, "gateway", env, tmp_path)
        followed = rig.symbols[10 : 10 + FOLLOWED]
        resyncs: list[tuple[str, str, str]] = []
        over_nats: dict[str, list[Book]] = defaultdict(list)
        over_gateway: dict[str, list[Book]] = defaultdict(list)
        nats_client = NatsMarketClient(
            nats_cluster.urls,
            subject_prefix=rig.recorder.prefix,
            redis_url=redis_server.url,
            redis_prefix=rig.redis_prefix,
            on_resync=lambda *event: resyncs.append(event),
        )
        gateway_client = GatewayClient(f"ws://127.0.0.1:{service_port(gateway)}/ws")
        tasks: list[asyncio.Task[None]] = []
        try:
            async with nats_client, gateway_client:
                for symbol in followed:
                    tasks.append(
                        asyncio.create_task(follow(nats_client, symbol, over_nats[symbol]))
                    )
                    tasks.append(
                        asyncio.create_task(follow(gateway_client, symbol, over_gateway[symbol]))
                    )

                def everyone_has_books() -> bool:
                    return all(over_nats[s] and over_gateway[s] for s in followed)

                await rig.drive_until(everyone_has_books, within=30)
                # the exchange misbehaves on the followed pairs: the service resyncs them, and
                # its deltas still chain from what it published
                for fault in (
                    {"type": "drop", "symbol": followed[0], "count": 1},
                    {"type": "duplicate", "symbol": followed[1], "count": 3},
                    {"type": "reorder", "symbol": followed[2], "count": 2},
                    {"type": "stale_snapshot", "symbol": followed[0]},
                    {"type": "malformed", "symbol": followed[3], "kind": "bad_sequence"},
                ):
                    rig.sim.fault(**fault)
                await rig.step(5)
                rig.sim.fault(type="close", symbol=followed[4], abrupt=True)
                await rig.step_for(2)
                rig.sim.clear_faults()

                # the gateway restarts: the gateway user reconnects and starts from a snapshot
                await asyncio.to_thread(gateway.stop)
                await rig.step(2)
                await asyncio.to_thread(gateway.start, 30)
                connects = gateway_client.stats.connects
                await rig.drive_until(lambda: gateway_client.stats.connects > connects, within=30)

                # a damaged delta on the wire (right chain, wrong checksum): the NATS user
                # resyncs; the gateway resyncs itself, so its users never see it
                victim = followed[5]
                await rig.drive_until(rig.caught_up, within=30)
                # market paused: nothing else is published meanwhile, once the delta of the
                # last view is out (the damaged one chains from it)
                await eventually(lambda: last_delta_out(rig, victim))
                await publish_damaged_delta(rig, nats_cluster, victim)
                await rig.drive_until(lambda: nats_client.stats.resyncs["checksum"] >= 1, within=20)
                await rig.drive_until(rig.caught_up, within=30)

                def users_caught_up() -> bool:
                    current = {s: max(rig.truth[s]) for s in followed}
                    return all(
                        books[s] and books[s][-1].last_update_id == current[s]
                        for books in (over_nats, over_gateway)
                        for s in followed
                    )

                await rig.drive_until(users_caught_up, within=30)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(gateway.stop)

        for books in (over_nats, over_gateway):
            for symbol in followed:
                check_books(rig, books[symbol])
        for client in (nats_client, gateway_client):
            stats = client.stats
            assert stats.checksums_verified >= stats.book_updates > 10 * FOLLOWED
            assert stats.bad_messages == 0
        # every resync explained: the exchange's faults broke no chain (the service resynced
        # its books, its deltas still chain from what it published); the NATS user resynced
        # once, for the damaged delta; the gateway user once a pair, for the restart
        assert resyncs == [(victim, "checksum", resyncs[0][2])], resyncs
        assert nats_client.stats.resyncs == {"checksum": 1}
        assert gateway_client.stats.resyncs == {"reconnect": FOLLOWED}
        assert gateway_client.stats.connects == 2


def last_delta_out(rig: Rig, symbol: str) -> bool:
    """The delta of ``symbol``'s last published view has arrived (the first of a term has none)."""
    last = next(m for _, m in reversed(rig.recorder.books) if m["symbol"] == symbol)
    return last["seq"] == 1 or any(
        (d["symbol"], d["epoch"], d["seq"]) == (symbol, last["epoch"], last["seq"])
        for d in rig.recorder.deltas
    )


async def publish_damaged_delta(rig: Rig, nats_cluster: NatsCluster, symbol: str) -> None:
    """The next delta of ``symbol`` as a broken publisher would send it: chained right, seq
    right, a level changed on the way, the checksum of the real view."""
    last = next(m for _, m in reversed(rig.recorder.books) if m["symbol"] == symbol)
    damaged = {
        "symbol": symbol,
        "lastUpdateId": last["lastUpdateId"],
        "prevUpdateId": last["lastUpdateId"],
        "E": last["E"],
        "seq": last["seq"] + 1,
        "epoch": last["epoch"],
        "bids": [[last["bids"][0][0], "123.45600000"]],  # the best bid's quantity, changed
        "asks": [],
        "checksum": last["checksum"],
    }
    nats = NatsClient(nats_cluster.urls, rig.recorder.prefix, name="damaged-publisher")
    await nats.connect()
    try:
        await nats.publish(f"delta.orderbook.{symbol}", orjson.dumps(damaged))
        await nats.flush()
    finally:
        await nats.drain()

"""What NatsClient relies on inside nats-py (pinned to one minor version): an upgrade that
changes any of it fails here, loudly, before it can fail in production."""

from __future__ import annotations

import asyncio
from importlib.metadata import version

from nats.aio.client import Client

from marketpipe.infra.local import NatsCluster


def test_the_pinned_minor_version() -> None:
    assert version("nats-py").startswith("2.16."), "re-check NatsClient against the new nats-py"


async def test_the_socket_writer_is_where_natsclient_takes_it(nats_cluster: NatsCluster) -> None:
    nc = Client()
    await nc.connect(servers=nats_cluster.urls[:1])
    try:
        writer = nc._transport._io_writer  # type: ignore[union-attr]
        assert isinstance(writer, asyncio.StreamWriter)
        assert writer.transport.get_write_buffer_limits()[1] > 0
        assert nc.is_connected and not nc.is_draining_pubs and not nc.is_closed
        assert nc.max_payload > 0
    finally:
        await nc.close()

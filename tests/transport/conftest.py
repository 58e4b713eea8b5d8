"""Fixtures the transport tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from marketpipe.infra.local import NatsCluster
from marketpipe.infra.proxy import FaultProxy


@pytest.fixture
def node_proxy(nats_cluster: NatsCluster) -> Iterator[FaultProxy]:
    """A fault proxy in front of the cluster's first node."""
    proxy = FaultProxy(target_port=nats_cluster.client_ports[0]).start()
    yield proxy
    proxy.stop()

"""Real servers for the tests: a 3-node NATS cluster, Redis and etcd on free loopback ports.

Session-scoped servers are shared; tests that kill or pause a server ask for the
``fresh_*`` fixtures, which start their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from marketpipe.infra.local import EtcdServer, NatsCluster, RedisServer
from marketpipe.infra.proxy import FaultProxy
from marketpipe.infra.simulator import SimulatorProcess


@pytest.fixture(scope="session")
def nats_cluster() -> Iterator[NatsCluster]:
    cluster = NatsCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    server = EtcdServer().start()
    yield server
    server.stop()


@pytest.fixture
def fresh_nats_cluster() -> Iterator[NatsCluster]:
    cluster = NatsCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def fresh_etcd() -> Iterator[EtcdServer]:
    server = EtcdServer().start()
    yield server
    server.stop()


@pytest.fixture
def exchange_sim() -> Iterator[SimulatorProcess]:
    """A running ``marketpipe exchange-sim`` with 5 symbols (BTCUSDT, ETHUSDT, ...), seed 1."""
    sim = SimulatorProcess(symbols=5, seed=1, extra_args=["--levels", "300"]).start()
    yield sim
    sim.stop()


@pytest.fixture
def node_proxy(nats_cluster: NatsCluster) -> Iterator[FaultProxy]:
    """A fault proxy (marketpipe.infra.proxy) in front of the shared cluster's first node."""
    proxy = FaultProxy(target_port=nats_cluster.client_ports[0]).start()
    yield proxy
    proxy.stop()

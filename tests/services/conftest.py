"""Fixtures the service tests share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from marketpipe.infra.local import NatsCluster
from marketpipe.infra.simulator import SimulatorProcess

HA_SYMBOLS = 20
HA_SETTINGS: dict[str, dict[str, Any]] = {"DEFAULT": {"MaxSpreadPct": 2.0, "Depth": 30}}


@pytest.fixture(scope="module")
def ha_sim() -> Iterator[SimulatorProcess]:
    """The running market the high-availability tests share (20 pairs, settings API set)."""
    sim = SimulatorProcess(
        symbols=HA_SYMBOLS, seed=11, extra_args=["--levels", "200", "--weight-limit", "1000000"]
    ).start()
    sim.admin("PUT", "settings", HA_SETTINGS)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def isolated_cluster() -> Iterator[NatsCluster]:
    """A cluster whose servers do not advertise their addresses: a process given proxied
    addresses cannot reconnect around its proxies (fault tests cut it off)."""
    nats = NatsCluster(no_advertise=True).start()
    yield nats
    nats.stop()

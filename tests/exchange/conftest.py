"""Simulators with short timers and a runner for StreamHubs, for the exchange client's tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from marketpipe.exchange.streams import StreamHub
from marketpipe.infra.simulator import SimulatorProcess
from tests.exchange.support import SimFactory


@pytest.fixture
def make_sim() -> Iterator[SimFactory]:
    """Start a simulator with extra command-line options (e.g. ``"--max-age", "3"``)."""
    started: list[SimulatorProcess] = []

    def start(*extra_args: str) -> SimulatorProcess:
        sim = SimulatorProcess(symbols=5, seed=1, extra_args=["--levels", "300", *extra_args])
        started.append(sim.start())
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
async def hub_runner() -> AsyncIterator[Callable[[StreamHub], None]]:
    tasks: list[asyncio.Task[None]] = []
    yield lambda hub: tasks.append(asyncio.create_task(hub.run()))
    for task in tasks:
        task.cancel()
    if tasks:
        _, stuck = await asyncio.wait(tasks, timeout=10)
        assert not stuck, "a StreamHub ignored the cancel"

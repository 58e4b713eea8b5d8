"""Helpers for the exchange client's tests against the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from marketpipe.infra.simulator import SimulatorProcess

SimFactory = Callable[..., SimulatorProcess]  # the make_sim fixture: extra CLI options -> running


async def admin(
    sim: SimulatorProcess, method: str, path: str, body: Any = None, **query: Any
) -> Any:
    """The simulator's admin API without blocking the event loop (the client runs in it)."""
    return await asyncio.to_thread(sim.admin, method, path, body, **query)


async def connections(sim: SimulatorProcess) -> dict[int, set[str]]:
    """Open WebSocket connections as the simulator sees them: id (1, 2, ... in order) -> streams."""
    return {c["id"]: set(c["streams"]) for c in await admin(sim, "GET", "connections")}


async def rest_requests(sim: SimulatorProcess, path: str = "/api/") -> list[dict[str, Any]]:
    """REST requests the simulator received (``time``, ``path``, ``query``, ``status``)."""
    return [r for r in await admin(sim, "GET", "requests") if r["path"].startswith(path)]


class Consumer:
    """What a StreamHub consumer sees: frames in order, and streams going up and down."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.up: list[frozenset[str]] = []
        self.down: list[frozenset[str]] = []

    def on_frame(self, raw: bytes) -> None:
        self.frames.append(orjson.loads(raw))

    def count(self, stream: str) -> int:
        return sum(1 for f in self.frames if f["stream"] == stream)

    def last_u(self, stream: str) -> int:
        return max((f["data"]["u"] for f in self.frames if f["stream"] == stream), default=0)

    def applied(self, stream: str) -> list[tuple[int, int]]:
        """The (U, u) a consumer deduplicating by ``u`` applies, in arrival order."""
        applied, last = [], 0
        for frame in self.frames:
            data = frame["data"]
            if frame["stream"] == stream and data["u"] > last:
                applied.append((data["U"], data["u"]))
                last = data["u"]
        return applied

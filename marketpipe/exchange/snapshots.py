"""The asyncio shell of :class:`SnapshotPlanner`: fetches due snapshots and reports results.

``request()`` may be called from any callback in the event loop; the loop started by ``run()``
fetches due jobs (at most ``max_in_flight`` at once) through :class:`ExchangeRest`, calls
``on_fetch_started(symbol)`` as a fetch leaves the queue and then ``on_snapshot(symbol,
snapshot)`` or ``on_snapshot_failed(symbol, error)``. The planner's time is the REST client's
clock (wall-clock: the server counts weight per clock minute).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from marketpipe.exchange.rest import DepthSnapshot, ExchangeError, ExchangeRest, ExchangeUnavailable
from marketpipe.exchange.snapshot_plan import SnapshotJob, SnapshotPlanner
from marketpipe.logs import get_logger

log = get_logger(__name__)

OnSnapshot = Callable[[str, DepthSnapshot], None]
OnSnapshotFailed = Callable[[str, Exception], None]
OnFetchStarted = Callable[[str], None]


class SnapshotScheduler:
    def __init__(
        self,
        rest: ExchangeRest,
        planner: SnapshotPlanner,
        on_snapshot: OnSnapshot,
        on_snapshot_failed: OnSnapshotFailed,
        *,
        on_fetch_started: OnFetchStarted | None = None,
        max_in_flight: int = 4,
    ) -> None:
        self.rest = rest
        self.planner = planner
        self._on_snapshot = on_snapshot
        self._on_failed = on_snapshot_failed
        self._on_started = on_fetch_started
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    def request(
        self, symbol: str, *, limit: int, priority: bool = False, resync: bool = False
    ) -> None:
        if self.planner.request(symbol, limit=limit, priority=priority, resync=resync):
            self._wakeup.set()

    def cancel(self, symbol: str) -> None:
        self.planner.cancel(symbol)

    async def run(self) -> None:
        clock = self.rest.clock
        try:
            while True:
                delay = self.planner.due_in(clock())
                if delay is None or delay > 0:
                    self._wakeup.clear()
                    # Not asyncio.wait_for: on 3.11 it can swallow a cancel (see streams.py).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wakeup.wait()
                    continue
                await self._slots.acquire()
                job = self.planner.pop(clock())
                if job is None:
                    self._slots.release()
                    continue
                if self._on_started is not None:
                    self._on_started(job.symbol)
                task = asyncio.create_task(self._fetch(job), name=f"snapshot-{job.symbol}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _fetch(self, job: SnapshotJob) -> None:
        try:
            snapshot = await self.rest.depth(job.symbol, job.limit)
        except (ExchangeError, ExchangeUnavailable) as exc:
            log.warning("snapshot_failed", symbol=job.symbol, error=str(exc))
            self.planner.finished(job.symbol)
            self._on_failed(job.symbol, exc)
            return
        finally:
            self._slots.release()
        self.planner.finished(job.symbol)
        self._on_snapshot(job.symbol, snapshot)

"""Every long-lived task of a process, watched by one mechanism (DESIGN §8).

A long-lived task is not meant to end. When one raises (or returns), its supervisor either
restarts it, after a backoff, or, for a task that cannot be restarted safely or that keeps
failing, declares the instance failed: ``on_fatal`` runs (the service runtime then fails
liveness, ends its leadership terms and exits non-zero) so that no dead task ever hides
behind a live lease::

    tasks = Supervisor("orderbook", on_fatal=ctx.fail)
    publisher = tasks.spawn("orderbook-publish", self._publish_forever)          # restarted
    tasks.spawn("orderbook-streams", self.hub.run, restart=False)                # fatal
    await publisher.stop()          # cancel one (bounded wait)
    await tasks.stop()              # cancel all (shutdown)

Every restart is logged with the error and counted (``marketpipe_task_restarts_total{task}``);
a task that fails :data:`RESTART_LIMIT` times within :data:`RESTART_WINDOW_SECONDS` is fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from marketpipe.exchange.backoff import Backoff
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import TASK_RESTARTS

log = get_logger("marketpipe.supervision")

RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 60.0
STOP_SECONDS = 2.0

TaskBody = Callable[[], Coroutine[Any, Any, None]]
FatalHandler = Callable[[str, BaseException | None], None]


class Supervised:
    """One supervised task (restarted in place: the handle stays the same)."""

    def __init__(self, supervisor: Supervisor, name: str, body: TaskBody, restart: bool) -> None:
        self.name = name
        self.restarts = 0
        self._supervisor = supervisor
        self._body = body
        self._restart = restart
        self._failures: deque[float] = deque()
        self._task = asyncio.get_running_loop().create_task(self._keep(), name=name)

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def stop(self, within: float = STOP_SECONDS) -> None:
        """Cancel the task and wait (at most ``within`` seconds) for it to end."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([self._task], timeout=within)
        self._supervisor._forget(self)

    async def _keep(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            error: BaseException | None = None
            try:
                await self._body()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            if not self._restart or self._too_many_failures():
                log.error("task failed", task=self.name, error=repr(error), exc_info=error)
                self._supervisor._fatal(self.name, error)
                return
            self.restarts += 1
            TASK_RESTARTS.labels(self.name).inc()
            log.error("task failed; restarting", task=self.name, error=repr(error), exc_info=error)
            await asyncio.sleep(backoff.next_delay())

    def _too_many_failures(self) -> bool:
        now = time.monotonic()
        self._failures.append(now)
        while self._failures and self._failures[0] < now - RESTART_WINDOW_SECONDS:
            self._failures.popleft()
        return len(self._failures) >= RESTART_LIMIT


class Supervisor:
    def __init__(self, owner: str, on_fatal: FatalHandler | None = None) -> None:
        self.owner = owner
        self.failed: str | None = None  # the task whose failure was fatal
        self._on_fatal = on_fatal
        self._tasks: set[Supervised] = set()

    @property
    def healthy(self) -> bool:
        return self.failed is None

    def spawn(self, name: str, body: TaskBody, *, restart: bool = True) -> Supervised:
        """Run ``body()`` as a supervised task: restarted when it fails (``restart``), or
        fatal for the instance."""
        task = Supervised(self, name, body, restart)
        self._tasks.add(task)
        return task

    async def stop(self, within: float = STOP_SECONDS) -> None:
        """Cancel every task and wait (at most ``within`` seconds in all) for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task._task.cancel()
        if tasks:
            await asyncio.wait([t._task for t in tasks], timeout=within)
        self._tasks.clear()

    def _forget(self, task: Supervised) -> None:
        self._tasks.discard(task)

    def _fatal(self, name: str, error: BaseException | None) -> None:
        if self.failed is None:
            self.failed = name
        if self._on_fatal is not None:
            self._on_fatal(name, error)

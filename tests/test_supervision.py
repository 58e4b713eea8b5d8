"""The one supervision mechanism: a failed task is restarted, or takes the instance down."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from marketpipe.supervision import RESTART_LIMIT, Supervisor
from tests.eventually import eventually


class Flaky:
    """A task body that fails its first ``failures`` runs, then runs forever."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.runs = 0
        self.error = error or RuntimeError("boom")

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            if isinstance(self.error, StopIteration):
                return  # a long-lived task that just ends counts as a failure too
            raise self.error
        await asyncio.Event().wait()


def _restarts(task: str) -> float:
    return REGISTRY.get_sample_value("marketpipe_task_restarts_total", {"task": task}) or 0


async def test_a_task_that_fails_is_restarted_and_counted() -> None:
    fatal: list[str] = []
    tasks = Supervisor("t", on_fatal=lambda name, _e: fatal.append(name))
    body = Flaky(failures=2)
    handle = tasks.spawn("sup-restart", body)
    await eventually(lambda: body.runs == 3)
    assert handle.running and handle.restarts == 2
    assert _restarts("sup-restart") >= 2
    assert fatal == [] and tasks.healthy
    await tasks.stop()
    assert not handle.running


async def test_a_task_that_returns_is_restarted_too() -> None:
    tasks = Supervisor("t")
    body = Flaky(failures=1, error=StopIteration())
    handle = tasks.spawn("sup-return", body)
    await eventually(lambda: body.runs == 2)
    assert handle.restarts == 1
    await tasks.stop()


async def test_a_task_that_may_not_restart_takes_the_instance_down() -> None:
    fatal: list[tuple[str, str]] = []
    tasks = Supervisor("t", on_fatal=lambda name, e: fatal.append((name, repr(e))))
    tasks.spawn("sup-fatal", Flaky(failures=1, error=ValueError("bad")), restart=False)
    await eventually(lambda: fatal)
    assert fatal == [("sup-fatal", "ValueError('bad')")]
    assert not tasks.healthy and tasks.failed == "sup-fatal"
    await tasks.stop()


async def test_a_task_that_keeps_failing_is_fatal() -> None:
    fatal: list[str] = []
    tasks = Supervisor("t", on_fatal=lambda name, _e: fatal.append(name))
    body = Flaky(failures=1000)
    tasks.spawn("sup-loop", body)
    await eventually(lambda: fatal, within=30)
    assert body.runs == RESTART_LIMIT
    await tasks.stop()
